"""Aggregation strategies (Flower Strategy subclasses), one file each, by name."""

from fedssl.registry import STRATEGY_NAMES, Registry  # noqa: F401 - names checked in tests

STRATEGIES = Registry("strategy", __name__)
register = STRATEGIES.register


def build_strategy(cfg):  # noqa: ANN001, ANN201 - fedssl.config.Config -> FedSSLStrategy
    """The strategy named by ``server.strategy``, configured from ``cfg``."""
    return STRATEGIES[cfg.server.strategy](cfg)
