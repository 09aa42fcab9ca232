"""A synthetic, learnable image dataset for tests and smoke runs (no files)."""

from __future__ import annotations

import functools

import numpy as np

from fedssl.data.sources.base import DatasetSplits, splits

SYNTHETIC_TRAIN, SYNTHETIC_TEST = 6000, 1000
_SYNTH_TAG = 0x5E7D
_SYNTH_CLASSES = 10
_SYNTH_PAD = 3  # max shift in pixels


@functools.lru_cache(maxsize=1)
def _prototypes() -> np.ndarray:
    """10 fixed smooth 34x34 float patterns in [0, 1] (constant seed: shared splits)."""
    rng = np.random.default_rng(20240601)
    size = 28 + 2 * _SYNTH_PAD
    low = rng.random((_SYNTH_CLASSES, 6, 6))
    # bilinear upsampling of a 6x6 grid gives smooth blobs
    t = np.linspace(0, 5, size)
    i0 = np.clip(np.floor(t).astype(int), 0, 4)
    w = (t - i0)[None, :]
    rows = low[:, i0, :] * (1 - w[..., None]) + low[:, i0 + 1, :] * w[..., None]
    protos = rows[:, :, i0] * (1 - w) + rows[:, :, i0 + 1] * w
    protos -= protos.min(axis=(1, 2), keepdims=True)
    protos /= protos.max(axis=(1, 2), keepdims=True)
    return protos


def _synth_split(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    k = _SYNTH_CLASSES
    labels = rng.permutation(np.arange(n) % k).astype(np.int64)
    protos = _prototypes()
    # a distractor class blended in, a random shift and pixel noise per sample
    other = (labels + rng.integers(1, k, size=n)) % k
    mix = rng.uniform(0.0, 0.4, size=(n, 1, 1))
    amp = rng.uniform(0.7, 1.0, size=(n, 1, 1))
    oy, ox = rng.integers(0, 2 * _SYNTH_PAD + 1, size=(2, n))
    r = oy[:, None] + np.arange(28)[None, :]
    c = ox[:, None] + np.arange(28)[None, :]
    crop = lambda p: p[np.arange(n)[:, None, None], r[:, :, None], c[:, None, :]]  # noqa: E731
    img = amp * ((1 - mix) * crop(protos[labels]) + mix * crop(protos[other]))
    img += rng.normal(0.0, 0.2, size=img.shape)
    x = np.clip(img * 255.0, 0, 255).astype(np.uint8)[..., None]
    return x, labels


def make_synthetic(n_train: int = SYNTHETIC_TRAIN, n_test: int = SYNTHETIC_TEST,
                   seed: int = 0) -> DatasetSplits:
    """Class-conditional 28x28x1 images: 10 fixed prototypes + mix, shift and noise.

    Prototypes are shared by every split and seed; samples are deterministic from
    ``seed``. Meant to be learnable by a small CNN in a few hundred steps (not
    perfectly: the blended distractor and noise make some samples ambiguous).
    """
    tx, ty = _synth_split(n_train, np.random.default_rng([_SYNTH_TAG, seed, 0]))
    vx, vy = _synth_split(n_test, np.random.default_rng([_SYNTH_TAG, seed, 1]))
    names = tuple(f"class_{i}" for i in range(_SYNTH_CLASSES))
    return splits("synthetic", tx, ty, vx, vy, names)
