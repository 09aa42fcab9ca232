"""CINIC-10 from its image folders (``train/<class>/*.png``, ``test/<class>/*.png``)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from fedssl.data.sources.base import (
    DataError,
    DatasetSplits,
    cache_dir,
    register,
    splits,
)
from fedssl.data.sources.cifar import CIFAR10_CLASSES

CINIC10_CLASSES = CIFAR10_CLASSES

_IMG_EXT = (".png", ".jpg", ".jpeg")


def _decode(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"{path}: cannot decode image ({type(e).__name__})") from None
    if arr.shape != (32, 32, 3):
        raise DataError(f"{path}: expected a 32x32 image, got {arr.shape[1]}x{arr.shape[0]}")
    return arr


def _read_image_folder(split_dir: Path, classes: tuple[str, ...]):
    paths, labels = [], []
    for k, c in enumerate(classes):
        files = sorted(p for p in (split_dir / c).iterdir()
                       if p.suffix.lower() in _IMG_EXT)
        paths += files
        labels += [k] * len(files)
    if not paths:
        raise DataError(f"{split_dir}: no images found (expected <class>/*.png)")
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        images = list(pool.map(_decode, paths, chunksize=256))
    return np.stack(images), np.asarray(labels, dtype=np.int64)


@register("cinic10")
def load_cinic10(root: str = "") -> DatasetSplits:
    base = Path(root).expanduser() if root else cache_dir("cinic10")
    out = []
    classes: tuple[str, ...] = ()
    for split in ("train", "test"):
        d = base / split
        if not d.is_dir():
            raise DataError(f"cinic10: {d} not found; download CINIC-10 and set "
                            f"data.root to the folder holding train/ and test/")
        found = tuple(sorted(p.name for p in d.iterdir() if p.is_dir()))
        if len(found) != 10:
            raise DataError(f"{d}: expected 10 class folders, found {len(found)}")
        if classes and found != classes:
            raise DataError(f"{d}: class folders differ from {base / 'train'}")
        classes = found
        out.append(_read_image_folder(d, classes))
    return splits("cinic10", out[0][0], out[0][1], out[1][0], out[1][1], classes)
