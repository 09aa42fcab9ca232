"""Dataset sources: read the train/test splits of each supported dataset as numpy.

Every loader returns uint8 images ``[N, H, W, C]`` and int64 labels ``[N]``. Files
are parsed here with numpy (IDX, CIFAR binary records, PNG via PIL), so the core never
needs Flower, HuggingFace or torchvision at run time; torchvision is imported only
to *download* a missing CIFAR / Fashion-MNIST copy when a network is reachable.

Loaded splits are cached per process and returned read-only (``x[idx]`` gives a
writable copy). Any missing, truncated or malformed file raises :class:`DataError`
with a one-line message naming the file and the problem.

Set ``FEDSSL_NO_DOWNLOAD=1`` to never attempt a download.

One module per format (:mod:`~.idx` Fashion-MNIST, :mod:`~.cifar`, :mod:`~.cinic10`)
registers its dataset names in ``SOURCES`` (:mod:`~.base`); a new format is one module
that uses ``@register("name")`` plus its import below. :mod:`~.synthetic` needs no
files; :mod:`~.load` picks the source and subsets.
"""

from fedssl.data.sources import cifar, cinic10, idx  # noqa: F401 - each registers its datasets
from fedssl.data.sources.base import (
    SOURCES,
    DataError,
    DatasetSplits,
    cache_dir,
    register,
)
from fedssl.data.sources.cifar import CIFAR10_CLASSES, CIFAR100_CLASSES
from fedssl.data.sources.cinic10 import CINIC10_CLASSES
from fedssl.data.sources.idx import FASHION_CLASSES, FASHION_SYSTEM_DIR, read_idx
from fedssl.data.sources.load import load_dataset, stratified_subset
from fedssl.data.sources.synthetic import (
    SYNTHETIC_TEST,
    SYNTHETIC_TRAIN,
    make_synthetic,
)

__all__ = [
    "CIFAR10_CLASSES", "CIFAR100_CLASSES", "CINIC10_CLASSES", "FASHION_CLASSES", "FASHION_SYSTEM_DIR",
    "SOURCES", "SYNTHETIC_TEST", "SYNTHETIC_TRAIN", "DataError", "DatasetSplits", "cache_dir",
    "load_dataset", "make_synthetic", "read_idx", "register", "stratified_subset",
]
