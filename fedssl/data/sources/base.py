"""What every source shares: the split type, the one-line data error, the cache
directory, and the registry of sources by dataset name."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedssl.config import ConfigError


class DataError(ConfigError):
    """A data file is missing, truncated or malformed (one-line message with path)."""


@dataclass(frozen=True)
class DatasetSplits:
    name: str
    train_x: np.ndarray  # uint8 [N, H, W, C]
    train_y: np.ndarray  # int64 [N]
    test_x: np.ndarray  # uint8 [M, H, W, C]
    test_y: np.ndarray  # int64 [M]
    num_classes: int
    class_names: tuple[str, ...]

    # numpy fields: compare by identity only (the generated __eq__ would be ambiguous)
    __eq__ = object.__eq__
    __hash__ = object.__hash__



# dataset name -> loader(root) -> DatasetSplits; one module per format registers its names
SOURCES: dict[str, Callable[[str], DatasetSplits]] = {}


def register(*names: str) -> Callable[[Callable[[str], DatasetSplits]], Callable[[str], DatasetSplits]]:
    def deco(fn: Callable[[str], DatasetSplits]) -> Callable[[str], DatasetSplits]:
        for name in names:
            if name in SOURCES and SOURCES[name] is not fn:
                raise ValueError(f"dataset source {name!r} registered twice")
            SOURCES[name] = fn
        return fn

    return deco


def cache_dir(name: str) -> Path:
    base = os.environ.get("FEDSSL_CACHE") or Path.home() / ".cache" / "fedssl"
    return Path(base) / name



def ro(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def splits(name: str, tx, ty, vx, vy, class_names: tuple[str, ...]) -> DatasetSplits:
    k = len(class_names)
    for what, y in (("train", ty), ("test", vy)):
        if len(y) and (y.min() < 0 or y.max() >= k):
            raise DataError(f"{name}: {what} labels outside [0, {k}) "
                            f"(min {y.min()}, max {y.max()})")
    return DatasetSplits(name, ro(np.ascontiguousarray(tx, dtype=np.uint8)),
                         ro(np.asarray(ty, dtype=np.int64)),
                         ro(np.ascontiguousarray(vx, dtype=np.uint8)),
                         ro(np.asarray(vy, dtype=np.int64)), k, class_names)
