"""``load_dataset``: the dataset a config names, cached per process, subsetted if asked."""

from __future__ import annotations

import functools

import numpy as np

from fedssl.config import DataConfig
from fedssl.data.sources.base import SOURCES, DataError, DatasetSplits, ro, splits
from fedssl.plugins import PluginError, is_import_path
from fedssl.plugins import load_dataset as load_user_dataset
from fedssl.data.sources.synthetic import (
    SYNTHETIC_TEST,
    SYNTHETIC_TRAIN,
    make_synthetic,
)

_SUBSET_TAG = 0x5B5E7


def load_dataset(cfg: DataConfig, seed: int = 0) -> DatasetSplits:
    """The dataset named by ``cfg`` (cached per process), subsetted if asked.

    ``cfg.max_train_samples`` / ``cfg.max_test_samples`` (> 0) select a
    class-stratified subset, deterministic from ``seed``. The seed only matters
    for subsets and for the synthetic dataset, so other loads share one cache entry.
    """
    uses_seed = cfg.dataset == "synthetic" or cfg.max_train_samples or cfg.max_test_samples
    return _load_cached(cfg.dataset, cfg.root, cfg.max_train_samples,
                        cfg.max_test_samples, seed if uses_seed else 0)


def preload(dataset: str, root: str) -> None:
    """Read ``dataset`` from ``root`` into this process's cache. ``fedssl bench``'s
    warm worker does, before it forks its cells: each then finds the arrays (read-only,
    shared copy-on-write) instead of decompressing the files again (0.25 s for
    Fashion-MNIST; files changed during the grid are therefore not read again). The
    synthetic dataset is made per seed, so it is not preloaded."""
    if dataset != "synthetic":
        _load_raw(dataset, root)


@functools.lru_cache(maxsize=8)
def _load_cached(dataset: str, root: str, max_train: int, max_test: int,
                 seed: int) -> DatasetSplits:
    if dataset == "synthetic":
        return make_synthetic(max_train or SYNTHETIC_TRAIN, max_test or SYNTHETIC_TEST,
                              seed)
    full = _load_raw(dataset, root)
    if not max_train and not max_test:
        return full
    tx, ty = full.train_x, full.train_y
    if max_train:
        keep = stratified_subset(ty, max_train, seed, split=0)
        tx, ty = ro(tx[keep]), ro(ty[keep])
    vx, vy = full.test_x, full.test_y
    if max_test:
        keep = stratified_subset(vy, max_test, seed, split=1)
        vx, vy = ro(vx[keep]), ro(vy[keep])
    return DatasetSplits(full.name, tx, ty, vx, vy, full.num_classes, full.class_names)


def stratified_subset(labels: np.ndarray, n: int, seed: int, split: int = 0) -> np.ndarray:
    """Sorted indices of ``n`` samples keeping class proportions (largest remainder).

    Deterministic from ``(seed, split)``; ``n >= len(labels)`` returns every index.
    """
    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels), dtype=np.int64)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * (n / len(labels))
    take = np.floor(exact).astype(np.int64)
    short = n - int(take.sum())
    if short:
        # largest fractional part first; ties by class order (stable)
        order = np.argsort(-(exact - take), kind="stable")
        take[order[:short]] += 1
    rng = np.random.default_rng([_SUBSET_TAG, seed, split])
    chosen = []
    for c, k in zip(classes, take):
        if k:
            idx = np.flatnonzero(labels == c)
            chosen.append(rng.choice(idx, size=int(k), replace=False))
    out = np.concatenate(chosen) if chosen else np.empty(0, np.int64)
    return np.sort(out).astype(np.int64)



@functools.lru_cache(maxsize=4)
def _load_raw(dataset: str, root: str) -> DatasetSplits:
    if is_import_path(dataset):  # a user's function (fedssl.plugins checks what it returns)
        try:
            tx, ty, vx, vy, names = load_user_dataset(dataset)
        except PluginError as e:
            raise DataError(f"data.dataset: {e}") from None
        return splits(dataset, tx, ty, vx, vy, names)
    if dataset not in SOURCES:
        raise DataError(f"data.dataset: unknown dataset {dataset!r}")
    return SOURCES[dataset](root)
