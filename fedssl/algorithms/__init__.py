"""Local SSL objectives, one file each, registered by name in ``ALGORITHMS``."""

from fedssl.algorithms.base import Algorithm, Batch, Params, RoundContext, param, register

# The registry of the built-in algorithms by name is fedssl.registry.ALGORITHMS: it
# imports this package's modules, which therefore do not import it.
__all__ = ["Algorithm", "Batch", "Params", "RoundContext", "param", "register"]
