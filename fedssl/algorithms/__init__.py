"""Local SSL objectives, one file each, registered by name in ``ALGORITHMS``."""

from fedssl.algorithms.base import Algorithm, Batch, Params, RoundContext, param, register
from fedssl.registry import ALGORITHMS

__all__ = ["ALGORITHMS", "Algorithm", "Batch", "Params", "RoundContext", "param", "register"]
