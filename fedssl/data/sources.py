"""Dataset sources: read the train/test splits of each supported dataset as numpy.

Every loader returns uint8 images ``[N, H, W, C]`` and int64 labels ``[N]``. Files
are parsed here with numpy (IDX, CIFAR pickles, PNG via PIL), so the core never
needs Flower, HuggingFace or torchvision at run time; torchvision is imported only
to *download* a missing CIFAR / Fashion-MNIST copy when a network is reachable.

Loaded splits are cached per process and returned read-only (``x[idx]`` gives a
writable copy). Any missing, truncated or malformed file raises :class:`DataError`
with a one-line message naming the file and the problem.

Set ``FEDSSL_NO_DOWNLOAD=1`` to never attempt a download.
"""

from __future__ import annotations

import functools
import gzip
import os
import pickle
import socket
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedssl.config import ConfigError, DataConfig

__all__ = [
    "DataError",
    "DatasetSplits",
    "load_dataset",
    "stratified_subset",
    "make_synthetic",
    "read_idx",
]


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


FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                   "Shirt", "Sneaker", "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                   "horse", "ship", "truck")
CIFAR100_CLASSES = tuple("""
apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus
butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach
couch crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster
house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree
motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear
pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road
rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar
sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip
turtle wardrobe whale willow_tree wolf woman worm""".split())
CINIC10_CLASSES = CIFAR10_CLASSES

FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
SYNTHETIC_TRAIN, SYNTHETIC_TEST = 6000, 1000

_SUBSET_TAG, _SYNTH_TAG = 0x5B5E7, 0x5E7D


def cache_dir(name: str) -> Path:
    base = os.environ.get("FEDSSL_CACHE") or Path.home() / ".cache" / "fedssl"
    return Path(base) / name


# --------------------------------------------------------------------------- public


def load_dataset(cfg: DataConfig, seed: int = 0) -> DatasetSplits:
    """The dataset named by ``cfg`` (cached per process), subsetted if asked.

    ``cfg.max_train_samples`` / ``cfg.max_test_samples`` (> 0) select a
    class-stratified subset, deterministic from ``seed``. The seed only matters
    for subsets and for the synthetic dataset, so other loads share one cache entry.
    """
    uses_seed = cfg.dataset == "synthetic" or cfg.max_train_samples or cfg.max_test_samples
    return _load_cached(cfg.dataset, cfg.root, cfg.max_train_samples,
                        cfg.max_test_samples, seed if uses_seed else 0)


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
        tx, ty = _ro(tx[keep]), _ro(ty[keep])
    vx, vy = full.test_x, full.test_y
    if max_test:
        keep = stratified_subset(vy, max_test, seed, split=1)
        vx, vy = _ro(vx[keep]), _ro(vy[keep])
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


def _ro(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def _splits(name: str, tx, ty, vx, vy, class_names: tuple[str, ...]) -> DatasetSplits:
    k = len(class_names)
    for what, y in (("train", ty), ("test", vy)):
        if len(y) and (y.min() < 0 or y.max() >= k):
            raise DataError(f"{name}: {what} labels outside [0, {k}) "
                            f"(min {y.min()}, max {y.max()})")
    return DatasetSplits(name, _ro(np.ascontiguousarray(tx, dtype=np.uint8)),
                         _ro(np.asarray(ty, dtype=np.int64)),
                         _ro(np.ascontiguousarray(vx, dtype=np.uint8)),
                         _ro(np.asarray(vy, dtype=np.int64)), k, class_names)


@functools.lru_cache(maxsize=4)
def _load_raw(dataset: str, root: str) -> DatasetSplits:
    if dataset == "fashion-mnist":
        return load_fashion_mnist(root)
    if dataset in ("cifar10", "cifar100"):
        return load_cifar(dataset, root)
    if dataset == "cinic10":
        return load_cinic10(root)
    raise DataError(f"data.dataset: unknown dataset {dataset!r}")


# ------------------------------------------------------------------- downloading


def _network_available(host: str = "ossci-datasets.s3.amazonaws.com",
                       timeout: float = 3.0) -> bool:
    """True when ``host:443`` answers within ``timeout`` s (DNS included)."""
    if os.environ.get("FEDSSL_NO_DOWNLOAD", "").strip() not in ("", "0"):
        return False
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 1.0)
    return bool(ok)


def _download(what: str, fn) -> str | None:
    """Run a torchvision download; returns an error text instead of raising."""
    if not _network_available():
        return "download skipped: no network or FEDSSL_NO_DOWNLOAD set"
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30.0)  # torchvision's urlopen has no timeout
    try:
        fn()
        return None
    except Exception as e:  # noqa: BLE001 - any download failure becomes a DataError
        first = (str(e).splitlines() or [""])[0]
        return f"download of {what} failed: {type(e).__name__}: {first}"
    finally:
        socket.setdefaulttimeout(old)


# ------------------------------------------------------------------ Fashion-MNIST

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


def load_fashion_mnist(root: str = "") -> DatasetSplits:
    dirs = _fashion_dirs(root)
    found = _find_fashion(dirs)
    if found is None:
        target = Path(root).expanduser() if root else cache_dir("fashion-mnist")

        def fetch() -> None:
            from torchvision.datasets import FashionMNIST

            for train in (True, False):
                FashionMNIST(str(target), train=train, download=True)

        err = _download("Fashion-MNIST", fetch)
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
    return _splits("fashion-mnist", arrays["train_x"][1][..., None],
                   arrays["train_y"][1], arrays["test_x"][1][..., None],
                   arrays["test_y"][1], FASHION_CLASSES)


# -------------------------------------------------------------------------- CIFAR

_CIFAR = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)],
                ["test_batch"], "labels", "batches.meta", "label_names", CIFAR10_CLASSES),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", "meta",
                 "fine_label_names", CIFAR100_CLASSES),
}


def _get(d: dict, key: str):
    if key.encode() in d:
        return d[key.encode()]
    if key in d:
        return d[key]
    raise KeyError(key)


def _read_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            # torchvision-format batches are trusted local files (as in torchvision)
            obj = pickle.load(f, encoding="bytes")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as e:  # noqa: BLE001 - unpickling errors come in many types
        raise DataError(f"{path}: unreadable pickle ({type(e).__name__})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict pickle, got {type(obj).__name__}")
    return obj


def _read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    d = _read_pickle(path)
    try:
        data, labels = _get(d, "data"), _get(d, label_key)
    except KeyError as e:
        raise DataError(f"{path}: missing key {e.args[0]!r}") from None
    data = np.asarray(data)
    labels = np.asarray(labels, dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: expected uint8 data of shape [N, 3072], got "
                        f"{data.dtype} {data.shape}")
    if labels.shape != (len(data),):
        raise DataError(f"{path}: {labels.size} labels for {len(data)} images")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def load_cifar(dataset: str, root: str = "") -> DatasetSplits:
    sub, train_files, test_files, label_key, meta, names_key, names = _CIFAR[dataset]
    base = Path(root).expanduser() if root else cache_dir(dataset)
    folder = base / sub
    if not folder.is_dir():
        def fetch() -> None:
            from torchvision.datasets import CIFAR10, CIFAR100

            (CIFAR10 if dataset == "cifar10" else CIFAR100)(str(base), download=True)

        err = _download(dataset, fetch)
        if not folder.is_dir():
            raise DataError(f"{dataset}: {folder} not found ({err or 'download left none'})"
                            f"; set data.root to the folder holding {sub}/")
    splits = []
    for files in (train_files, test_files):
        parts = [_read_cifar_batch(folder / f, label_key) for f in files]
        splits.append((np.concatenate([p[0] for p in parts]),
                       np.concatenate([p[1] for p in parts])))
    if (folder / meta).is_file():
        try:
            got = tuple(n.decode() if isinstance(n, bytes) else str(n)
                        for n in _get(_read_pickle(folder / meta), names_key))
            if len(got) == len(names):
                names = got
        except (KeyError, TypeError, UnicodeDecodeError):
            pass  # fall back to the built-in names
    return _splits(dataset, splits[0][0], splits[0][1], splits[1][0], splits[1][1],
                   names)


# ------------------------------------------------------------------------ CINIC-10

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
    return _splits("cinic10", out[0][0], out[0][1], out[1][0], out[1][1], classes)


# ----------------------------------------------------------------------- synthetic

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
    return _splits("synthetic", tx, ty, vx, vy, names)
