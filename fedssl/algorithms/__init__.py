"""Local SSL objectives, one file each, registered by name in ``ALGORITHMS``."""

from fedssl.algorithms.base import Algorithm, Batch, RoundContext
from fedssl.registry import Registry

ALGORITHMS = Registry("algorithm", __name__)
register = ALGORITHMS.register

__all__ = ["ALGORITHMS", "Algorithm", "Batch", "RoundContext", "register"]
