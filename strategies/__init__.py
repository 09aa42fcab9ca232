"""Server strategies by name: every strategy Flower ships, fedssl's own, or a user's.

``server.strategy`` is

- a lower-case Flower class name (``fedavg``, ``fedprox``, ``fedavgm``, ``fedadam``,
  ``fedyogi``, ``fedadagrad``, ``fedmedian``, ``fedtrimmedavg``, ``krum``,
  ``multikrum``, ``bulyan``, ``qfedavg``), built with the settings fedssl maps from
  its own keys (below);
- ``fedossl``: :class:`fedssl.strategies.fedossl.FedoSSL`, a Flower FedAvg with global
  clustering of the clients' centroids;
- ``"package.module:ClassName"``: any ``flwr.serverapp.strategy.Strategy`` subclass.

``server.params`` sets constructor arguments by name, e.g. ``"beta = 0.1"`` for
FedTrimmedAvg or ``"num_malicious_nodes = 1, num_nodes_to_select = 3"`` for MultiKrum
(comma-separated ``name = value``, values in TOML syntax). Names are checked against
the class's signature. Sampling is fedssl's (``federation.*``), so the sampling
arguments cannot be set there. The strategy is then wrapped by
:class:`fedssl.strategies.wrapper.FedSSLStrategy` (packing, validation, payloads).
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from flwr.serverapp import strategy as flwr_strategies
from flwr.serverapp.strategy import Strategy

from fedssl.config import Config, ConfigError
from fedssl.config.params import accepted_params, parse_params
from fedssl.registry import STRATEGY_NAMES
from fedssl.strategies.fedossl import FedoSSL
from fedssl.strategies.wrapper import FedSSLStrategy

# Flower's strategies that aggregate model arrays: the DP wrappers take another
# strategy as an argument and FedXgb* aggregate XGBoost trees, not arrays.
FLOWER = {name.lower(): getattr(flwr_strategies, name) for name in flwr_strategies.__all__
          if name not in ("Result", "Strategy") and not name.startswith(("Differential", "FedXgb"))}
CLASSES: dict[str, type[Strategy]] = {**FLOWER, "fedossl": FedoSSL}

# What fedssl's own config keys mean for each class (applied when the class takes them).
SAMPLING = {"fraction_train": 1.0, "fraction_evaluate": 0.0, "min_train_nodes": 1,
            "min_evaluate_nodes": 0, "min_available_nodes": 1}
SAMPLING_KEYS = {"fraction_train": "federation.fraction_train", "min_train_nodes": "federation.min_clients",
                 "min_available_nodes": "federation.min_clients", "fraction_evaluate": "",
                 "min_evaluate_nodes": ""}


def mapped_kwargs(cfg: Config) -> dict[str, Any]:
    """Constructor arguments fedssl sets from its keys, by argument name."""
    s = cfg.server
    return {"proximal_mu": s.proximal_mu, "server_learning_rate": s.server_lr,
            "server_momentum": s.server_momentum, "eta": s.eta, "eta_l": cfg.client.lr,
            "beta_1": s.beta_1, "beta_2": s.beta_2, "tau": s.tau,
            "client_learning_rate": cfg.client.lr, "train_loss_key": "train_loss",
            "weighted_by_key": cfg.algorithm_class.weight_key,  # e.g. (FL)^2's learning status
            **FedoSSL.config_kwargs(cfg)}  # num_classes, num_seen, seed and FedoSSL's own


def strategy_class(name: str) -> type[Strategy]:
    """The class ``server.strategy`` names; ConfigError (one line) if there is none."""
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"server.strategy: cannot import {name!r} ({e})") from None
        if not (inspect.isclass(cls) and issubclass(cls, Strategy)):
            raise ConfigError(f"server.strategy: {name!r} is not a flwr.serverapp.strategy.Strategy subclass")
        return cls
    if name not in CLASSES:
        raise ConfigError(f"server.strategy: unknown strategy {name!r} (choose from "
                          f"{', '.join(sorted(CLASSES))}, or give 'module:Class')")
    return CLASSES[name]


def inner_strategy(cfg: Config) -> Strategy:
    """The Flower strategy ``cfg`` names, constructed; ConfigError on a bad parameter."""
    cls = strategy_class(cfg.server.strategy)
    accepted = accepted_params(cls)
    params = parse_params(getattr(cfg.server, "params", ""))
    for name in params:
        if name in SAMPLING_KEYS:
            hint = f"; set {SAMPLING_KEYS[name]}" if SAMPLING_KEYS[name] else ""
            raise ConfigError(f"server.params: {name} is fedssl's to set (sampling){hint}")
        if name not in accepted:
            raise ConfigError(f"server.params: {cls.__name__} has no parameter {name!r} "
                              f"(it takes {', '.join(sorted(accepted - set(SAMPLING_KEYS))) or 'none'})")
    kwargs = {k: v for k, v in {**SAMPLING, **mapped_kwargs(cfg)}.items() if k in accepted}
    kwargs.update(params)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"server.strategy {cfg.server.strategy!r}: {e}".splitlines()[0]) from None


def build_strategy(cfg: Config, model_bytes: int = 0) -> FedSSLStrategy:
    """``cfg``'s strategy wrapped in fedssl's sampling, packing and validation."""
    f = cfg.federation
    return FedSSLStrategy(inner_strategy(cfg), num_clients=cfg.data.num_clients,
                          fraction_train=f.fraction_train, min_clients=f.min_clients, seed=cfg.run.seed,
                          max_update_norm=cfg.server.max_update_norm, clients_per_node=f.clients_per_node,
                          num_cpus=f.num_cpus, round_timeout=f.round_timeout, model_bytes=model_bytes)


def _check_names() -> None:
    """fedssl.registry lists the names for config validation without importing Flower."""
    if set(CLASSES) != set(STRATEGY_NAMES):
        raise RuntimeError(f"fedssl.registry.STRATEGY_NAMES lacks {sorted(set(CLASSES) - set(STRATEGY_NAMES))} "
                           f"and names {sorted(set(STRATEGY_NAMES) - set(CLASSES))} without a class")


_check_names()

__all__ = ["CLASSES", "FLOWER", "build_strategy", "inner_strategy", "parse_params", "strategy_class"]
