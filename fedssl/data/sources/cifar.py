"""CIFAR-10 / CIFAR-100 from their python batches (``cifar-10-batches-py`` /
``cifar-100-python``; downloaded with torchvision when missing). The batches are
pickles by format: they are read only from the local dataset folder, and through an
unpickler that builds nothing but plain containers and numpy arrays, so a crafted
file cannot run code (torchvision uses plain ``pickle.load``)."""

from __future__ import annotations

import pickle
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


class _ArraysOnly(pickle.Unpickler):
    """Resolves only the globals a numpy array needs: nothing else is importable."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> type:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        return super().find_class(module, name)


def _read_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _ArraysOnly(f, encoding="bytes").load()
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

        err = download(dataset, fetch)
        if not folder.is_dir():
            raise DataError(f"{dataset}: {folder} not found ({err or 'download left none'})"
                            f"; set data.root to the folder holding {sub}/")
    parts_of = []
    for files in (train_files, test_files):
        parts = [_read_cifar_batch(folder / f, label_key) for f in files]
        parts_of.append((np.concatenate([p[0] for p in parts]),
                       np.concatenate([p[1] for p in parts])))
    if (folder / meta).is_file():
        try:
            got = tuple(n.decode() if isinstance(n, bytes) else str(n)
                        for n in _get(_read_pickle(folder / meta), names_key))
            if len(got) == len(names):
                names = got
        except (KeyError, TypeError, UnicodeDecodeError):
            pass  # fall back to the built-in names
    return splits(dataset, parts_of[0][0], parts_of[0][1], parts_of[1][0], parts_of[1][1],
                   names)


@register("cifar10")
def load_cifar10(root: str = "") -> DatasetSplits:
    return load_cifar("cifar10", root)


@register("cifar100")
def load_cifar100(root: str = "") -> DatasetSplits:
    return load_cifar("cifar100", root)
