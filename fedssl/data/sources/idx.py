"""Fashion-MNIST from IDX files (optionally gzipped): the Debian package's copy, a
``data.root``, or the cache (downloaded with torchvision when missing)."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from fedssl.data.sources.base import (
    DataError,
    DatasetSplits,
    cache_dir,
    register,
    splits,
)
from fedssl.data.sources.download import download

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                   "Shirt", "Sneaker", "Bag", "Ankle boot")
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")

_IDX_FILES = {
    "train_x": ("train-images-idx3-ubyte", 2051),
    "train_y": ("train-labels-idx1-ubyte", 2049),
    "test_x": ("t10k-images-idx3-ubyte", 2051),
    "test_y": ("t10k-labels-idx1-ubyte", 2049),
}


def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """Parse an IDX file (optionally gzipped) of unsigned bytes, checking it fully."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
        raise DataError(f"{path}: unreadable or corrupt ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else 'truncated'})") from None
    if len(raw) < 4:
        raise DataError(f"{path}: truncated IDX file ({len(raw)} bytes, no header)")
    got = int.from_bytes(raw[:4], "big")
    if got != magic:
        raise DataError(f"{path}: bad IDX magic number {got} (expected {magic})")
    ndim = magic & 0xFF
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes)")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    want = int(np.prod(dims, dtype=np.int64))
    have = len(raw) - head
    if have != want:
        kind = "truncated" if have < want else "oversized"
        raise DataError(f"{path}: {kind} IDX payload ({have} bytes, expected {want} "
                        f"for shape {dims})")
    return np.frombuffer(raw, dtype=np.uint8, offset=head).reshape(dims)


def _idx_file(d: Path, base: str) -> Path | None:
    for name in (base, base + ".gz"):  # uncompressed first: faster
        if (d / name).is_file():
            return d / name
    return None


def _fashion_dirs(root: str) -> list[Path]:
    if root:
        r = Path(root).expanduser()
        return [r, r / "FashionMNIST" / "raw"]
    cache = cache_dir("fashion-mnist")
    return [FASHION_SYSTEM_DIR, cache, cache / "FashionMNIST" / "raw"]


def _find_fashion(dirs: list[Path]) -> Path | None:
    for d in dirs:
        if any(_idx_file(d, base) for base, _ in _IDX_FILES.values()):
            return d
    return None


@register("fashion-mnist")
def load_fashion_mnist(root: str = "") -> DatasetSplits:
    dirs = _fashion_dirs(root)
    found = _find_fashion(dirs)
    if found is None:
        target = Path(root).expanduser() if root else cache_dir("fashion-mnist")

        def fetch() -> None:
            from torchvision.datasets import FashionMNIST

            for train in (True, False):
                FashionMNIST(str(target), train=train, download=True)

        err = download("Fashion-MNIST", fetch)
        found = _find_fashion(dirs)
        if found is None:
            where = " or ".join(str(d) for d in dirs)
            raise DataError(
                f"fashion-mnist: no IDX files found under {where} "
                f"({err or 'download left none'}); install the Debian package dataset-fashion-mnist or "
                f"set data.root")
    arrays = {}
    for key, (base, magic) in _IDX_FILES.items():
        path = _idx_file(found, base)
        if path is None:
            raise DataError(f"{found / base}(.gz): file not found (other Fashion-MNIST "
                            f"IDX files are in {found})")
        arrays[key] = (path, read_idx(path, magic))
    for split in ("train", "test"):
        (px, x), (py, y) = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.ndim != 3 or x.shape[1:] != (28, 28):
            raise DataError(f"{px}: expected images of shape [N, 28, 28], got {x.shape}")
        if len(x) != len(y):
            raise DataError(f"{py}: {len(y)} labels but {px} holds {len(x)} images")
        if len(y) and y.max() >= 10:
            raise DataError(f"{py}: label {int(y.max())} outside [0, 10)")
    return splits("fashion-mnist", arrays["train_x"][1][..., None],
                   arrays["train_y"][1], arrays["test_x"][1][..., None],
                   arrays["test_y"][1], FASHION_CLASSES)
