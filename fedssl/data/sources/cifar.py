"""CIFAR-10 / CIFAR-100 from their binary distributions (``cifar-10-batches-bin`` /
``cifar-100-binary``, the "binary version" on the dataset's page; downloaded when
missing). Each record is fixed-size bytes: the label byte(s), then 3072 pixel bytes
(1024 red, 1024 green, 1024 blue, row-major). The python-version batches
(``cifar-10-batches-py``) are not read: they are serialised Python objects, and
loading them can run code, so a data file could compromise every client."""

from __future__ import annotations

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

# folder, train files, test files, label bytes per record (the last one is the
# label we learn: CIFAR-100 stores coarse then fine), class-name file, URL
_CIFAR = {
    "cifar10": ("cifar-10-batches-bin", [f"data_batch_{i}.bin" for i in range(1, 6)],
                ["test_batch.bin"], 1, "batches.meta.txt", CIFAR10_CLASSES,
                "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"),
    "cifar100": ("cifar-100-binary", ["train.bin"], ["test.bin"], 2, "fine_label_names.txt",
                 CIFAR100_CLASSES, "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz"),
}
_PIXELS = 3 * 32 * 32
_PYTHON_VERSION = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


def _read_cifar_batch(path: Path, label_bytes: int, num_classes: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: unreadable ({type(e).__name__})") from None
    record = label_bytes + _PIXELS
    if raw.size == 0 or raw.size % record:
        raise DataError(f"{path}: {raw.size} bytes is not a whole number of "
                        f"{record}-byte records (truncated or not a CIFAR binary batch)")
    rows = raw.reshape(-1, record)
    labels = rows[:, label_bytes - 1].astype(np.int64)
    if labels.max() >= num_classes:
        raise DataError(f"{path}: label {int(labels.max())} out of range for "
                        f"{num_classes} classes")
    images = rows[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _class_names(path: Path, default: tuple[str, ...]) -> tuple[str, ...]:
    try:
        got = tuple(n.strip() for n in path.read_text().splitlines() if n.strip())
    except (OSError, UnicodeDecodeError):
        return default
    return got if len(got) == len(default) else default


def load_cifar(dataset: str, root: str = "") -> DatasetSplits:
    sub, train_files, test_files, label_bytes, meta, names, url = _CIFAR[dataset]
    base = Path(root).expanduser() if root else cache_dir(dataset)
    folder = base / sub
    if not folder.is_dir():
        def fetch() -> None:
            from torchvision.datasets.utils import download_and_extract_archive

            download_and_extract_archive(url, str(base))

        err = download(dataset, fetch)
        if not folder.is_dir():
            hint = (f"; {base / _PYTHON_VERSION[dataset]} is the python version, which is "
                    f"not read: get the binary version"
                    if (base / _PYTHON_VERSION[dataset]).is_dir() else "")
            raise DataError(f"{dataset}: {folder} not found ({err or 'download left none'})"
                            f"; set data.root to the folder holding {sub}/{hint}")
    parts_of = []
    for files in (train_files, test_files):
        parts = [_read_cifar_batch(folder / f, label_bytes, len(names)) for f in files]
        parts_of.append((np.concatenate([p[0] for p in parts]),
                         np.concatenate([p[1] for p in parts])))
    names = _class_names(folder / meta, names)
    return splits(dataset, parts_of[0][0], parts_of[0][1], parts_of[1][0], parts_of[1][1],
                  names)


@register("cifar10")
def load_cifar10(root: str = "") -> DatasetSplits:
    return load_cifar("cifar10", root)


@register("cifar100")
def load_cifar100(root: str = "") -> DatasetSplits:
    return load_cifar("cifar100", root)
