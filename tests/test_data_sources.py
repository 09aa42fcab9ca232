"""Dataset loaders: real Fashion-MNIST when installed, generated files otherwise."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from fedssl.config import ConfigError, DataConfig
from fedssl.data import DataError, load_dataset, stratified_subset
from fedssl.data.sources.load import preload
from fedssl.data.sources import (
    CIFAR100_CLASSES,
    FASHION_SYSTEM_DIR,
    make_synthetic,
    read_idx,
)


@pytest.fixture(autouse=True)
def no_download(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDSSL_NO_DOWNLOAD", "1")
    monkeypatch.setenv("FEDSSL_CACHE", str(tmp_path / "cache"))


def assert_one_line_with(err: pytest.ExceptionInfo, path: Path) -> None:
    msg = str(err.value)
    assert "\n" not in msg
    assert str(path) in msg, msg
    assert isinstance(err.value, ConfigError)


# ------------------------------------------------------------------ Fashion-MNIST

IDX = {
    "train-images-idx3-ubyte": 2051,
    "train-labels-idx1-ubyte": 2049,
    "t10k-images-idx3-ubyte": 2051,
    "t10k-labels-idx1-ubyte": 2049,
}


def idx_bytes(arr: np.ndarray, magic: int) -> bytes:
    head = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    return head + arr.astype(np.uint8).tobytes()


def write_fashion(d: Path, n_train=20, n_test=10, gz=True) -> dict[str, np.ndarray]:
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(n_test)[::-1] % 10,
    }
    for name, arr in arrays.items():
        data = idx_bytes(arr, IDX[name])
        if gz:
            (d / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (d / name).write_bytes(data)
    return arrays


@pytest.mark.skipif(not (FASHION_SYSTEM_DIR / "train-images-idx3-ubyte.gz").exists(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    ds = load_dataset(DataConfig(dataset="fashion-mnist"))
    assert ds.train_x.shape == (60000, 28, 28, 1) and ds.train_x.dtype == np.uint8
    assert ds.test_x.shape == (10000, 28, 28, 1) and ds.test_x.dtype == np.uint8
    assert ds.train_y.shape == (60000,) and ds.train_y.dtype == np.int64
    assert ds.test_y.shape == (10000,)
    assert set(np.unique(ds.train_y)) == set(range(10)) == set(np.unique(ds.test_y))
    assert ds.num_classes == 10 and len(ds.class_names) == 10
    assert load_dataset(DataConfig(dataset="fashion-mnist")) is ds, "cached"
    assert not ds.train_x.flags.writeable
    sub = load_dataset(DataConfig(max_train_samples=1000, max_test_samples=500), seed=1)
    assert np.array_equal(np.bincount(sub.train_y), [100] * 10)
    assert np.array_equal(np.bincount(sub.test_y), [50] * 10)


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_from_root(tmp_path, gz):
    arrays = write_fashion(tmp_path, gz=gz)
    ds = load_dataset(DataConfig(root=str(tmp_path)))
    assert ds.train_x.shape == (20, 28, 28, 1) and ds.test_x.shape == (10, 28, 28, 1)
    assert np.array_equal(ds.train_x[..., 0], arrays["train-images-idx3-ubyte"])
    assert np.array_equal(ds.test_y, arrays["t10k-labels-idx1-ubyte"])


def test_preload_fills_the_cache_that_load_dataset_reads(tmp_path):
    """What fedssl bench's warm worker does before forking its cells: once preloaded,
    the dataset comes from the cache, not from the files (here: deleted)."""
    arrays = write_fashion(tmp_path)
    preload("fashion-mnist", str(tmp_path))
    for f in tmp_path.iterdir():
        f.unlink()
    ds = load_dataset(DataConfig(root=str(tmp_path)))
    assert np.array_equal(ds.train_x[..., 0], arrays["train-images-idx3-ubyte"])
    preload("synthetic", "")  # made per seed from the config: nothing to read, no error


def test_fashion_torchvision_layout(tmp_path):
    write_fashion(tmp_path / "FashionMNIST" / "raw")
    assert len(load_dataset(DataConfig(root=str(tmp_path))).train_y) == 20


def test_fashion_truncated_payload(tmp_path):
    write_fashion(tmp_path, gz=False)
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(bad.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated") as err:
        load_dataset(DataConfig(root=str(tmp_path)))
    assert_one_line_with(err, bad)


def test_fashion_truncated_gzip(tmp_path):
    write_fashion(tmp_path, gz=True)
    bad = tmp_path / "train-labels-idx1-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:-10])
    with pytest.raises(DataError) as err:
        load_dataset(DataConfig(root=str(tmp_path)))
    assert_one_line_with(err, bad)


def test_fashion_not_gzip(tmp_path):
    write_fashion(tmp_path, gz=True)
    bad = tmp_path / "t10k-images-idx3-ubyte.gz"
    bad.write_bytes(b"this is not gzip data at all")
    with pytest.raises(DataError) as err:
        load_dataset(DataConfig(root=str(tmp_path)))
    assert_one_line_with(err, bad)


def test_fashion_wrong_magic(tmp_path):
    write_fashion(tmp_path, gz=False)
    bad = tmp_path / "t10k-labels-idx1-ubyte"
    raw = bytearray(bad.read_bytes())
    raw[:4] = (2051).to_bytes(4, "big")
    bad.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="magic") as err:
        load_dataset(DataConfig(root=str(tmp_path)))
    assert_one_line_with(err, bad)


def test_fashion_count_mismatch(tmp_path):
    write_fashion(tmp_path, gz=False)
    lab = tmp_path / "train-labels-idx1-ubyte"
    lab.write_bytes(idx_bytes(np.zeros(19), 2049))
    with pytest.raises(DataError, match="19 labels") as err:
        load_dataset(DataConfig(root=str(tmp_path)))
    assert_one_line_with(err, lab)


def test_fashion_missing_one_file(tmp_path):
    write_fashion(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="not found") as err:
        load_dataset(DataConfig(root=str(tmp_path)))
    assert_one_line_with(err, tmp_path / "t10k-labels-idx1-ubyte")


def test_fashion_missing_root(tmp_path):
    root = tmp_path / "nowhere"
    with pytest.raises(DataError, match="dataset-fashion-mnist") as err:
        load_dataset(DataConfig(root=str(root)))
    assert_one_line_with(err, root)


def test_read_idx_header_too_short(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"\x00\x00")
    with pytest.raises(DataError, match="truncated"):
        read_idx(p, 2049)


# -------------------------------------------------------------------------- CIFAR


def write_cifar_binary(path: Path, labels, rng, coarse: bool = False) -> np.ndarray:
    """One batch in the dataset's binary layout: [coarse] label byte, then 3072 pixels."""
    n = len(labels)
    pixels = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    lab = np.asarray(labels, np.uint8)[:, None]
    cols = [np.zeros_like(lab), lab] if coarse else [lab]
    path.write_bytes(np.concatenate(cols + [pixels], axis=1).tobytes())
    return pixels


def write_cifar10(root: Path, per_batch=20, meta=True) -> Path:
    d = root / "cifar-10-batches-bin"
    d.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{j}.bin" for j in range(1, 6)] + ["test_batch.bin"]:
        write_cifar_binary(d / name, rng.integers(0, 10, per_batch), rng)
    if meta:
        (d / "batches.meta.txt").write_text("".join(f"c10_{i}\n" for i in range(10)) + "\n")
    return d


def test_cifar10(tmp_path):
    d = write_cifar10(tmp_path)
    ds = load_dataset(DataConfig(dataset="cifar10", root=str(tmp_path)))
    assert ds.train_x.shape == (100, 32, 32, 3) and ds.train_x.dtype == np.uint8
    assert ds.test_x.shape == (20, 32, 32, 3) and ds.test_y.dtype == np.int64
    rec = np.fromfile(d / "data_batch_2.bin", np.uint8).reshape(-1, 3073)[3]
    label, row, x = rec[0], rec[1:], ds.train_x[23]
    assert x[0, 0, 0] == row[0] and x[0, 0, 1] == row[1024] and x[0, 0, 2] == row[2048]
    assert x[2, 5, 1] == row[1024 + 2 * 32 + 5]
    assert ds.train_y[23] == label
    assert ds.class_names[0] == "c10_0" and ds.num_classes == 10


def test_cifar100(tmp_path):
    d = tmp_path / "cifar-100-binary"
    d.mkdir()
    rng = np.random.default_rng(2)
    for name, n in (("train.bin", 40), ("test.bin", 20)):
        write_cifar_binary(d / name, list(range(99, 99 - n, -1)), rng, coarse=True)
    ds = load_dataset(DataConfig(dataset="cifar100", root=str(tmp_path)))
    assert ds.train_x.shape == (40, 32, 32, 3) and ds.test_x.shape == (20, 32, 32, 3)
    assert ds.train_y[0] == 99 and ds.train_y[39] == 60 and ds.num_classes == 100
    assert ds.class_names == CIFAR100_CLASSES and len(set(CIFAR100_CLASSES)) == 100


def test_cifar_max_samples_stratified(tmp_path):
    write_cifar10(tmp_path, per_batch=200)
    cfg = DataConfig(dataset="cifar10", root=str(tmp_path), max_train_samples=300,
                     max_test_samples=50)
    full = load_dataset(DataConfig(dataset="cifar10", root=str(tmp_path)))
    a, b = load_dataset(cfg, seed=0), load_dataset(cfg, seed=1)
    assert len(a.train_y) == 300 and len(a.test_y) == 50
    expect = np.bincount(full.train_y, minlength=10) * 300 / 1000
    assert np.all(np.abs(np.bincount(a.train_y, minlength=10) - expect) < 1)
    assert not np.array_equal(a.train_x, b.train_x)
    assert load_dataset(cfg, seed=0) is a


def test_cifar_missing(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset(DataConfig(dataset="cifar10", root=str(tmp_path)))
    assert_one_line_with(err, tmp_path / "cifar-10-batches-bin")


def test_cifar_python_version_is_refused_with_a_hint(tmp_path):
    """The python-version batches are serialised objects: never read, and the error says
    which download to use instead."""
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"\x80\x04anything")
    with pytest.raises(DataError, match="get the binary version") as err:
        load_dataset(DataConfig(dataset="cifar10", root=str(tmp_path)))
    assert_one_line_with(err, tmp_path / "cifar-10-batches-py")


def test_cifar_truncated_batch(tmp_path):
    d = write_cifar10(tmp_path)
    raw = (d / "data_batch_3.bin").read_bytes()
    (d / "data_batch_3.bin").write_bytes(raw[:-100])
    with pytest.raises(DataError, match="3073-byte records") as err:
        load_dataset(DataConfig(dataset="cifar10", root=str(tmp_path)))
    assert_one_line_with(err, d / "data_batch_3.bin")


def test_cifar_bad_label_or_missing_file(tmp_path):
    d = write_cifar10(tmp_path)
    rec = np.fromfile(d / "test_batch.bin", np.uint8).reshape(-1, 3073)
    rec[5, 0] = 10
    rec.tofile(d / "test_batch.bin")
    with pytest.raises(DataError, match="label 10 out of range for 10 classes") as err:
        load_dataset(DataConfig(dataset="cifar10", root=str(tmp_path)))
    assert_one_line_with(err, d / "test_batch.bin")
    (d / "test_batch.bin").unlink()
    with pytest.raises(DataError, match="file not found") as err:
        load_dataset(DataConfig(dataset="cifar10", root=str(tmp_path)))
    assert_one_line_with(err, d / "test_batch.bin")


# ----------------------------------------------------------------------- CINIC-10

CINIC = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
         "ship", "truck")


def write_cinic(root: Path) -> None:
    from PIL import Image

    for split, n in (("train", 2), ("valid", 1), ("test", 1)):
        for k, c in enumerate(CINIC):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                arr = np.full((32, 32, 3), 10 * k + i, dtype=np.uint8)
                arr[0, 0] = (1, 2, 3)
                Image.fromarray(arr).save(d / f"img_{i}.png")
    # a grayscale image, as in the real CINIC-10 (ImageNet-derived)
    Image.fromarray(np.full((32, 32), 77, np.uint8), mode="L").save(
        root / "train" / "cat" / "gray.png")


def test_cinic10(tmp_path):
    write_cinic(tmp_path)
    ds = load_dataset(DataConfig(dataset="cinic10", root=str(tmp_path)))
    assert ds.train_x.shape == (21, 32, 32, 3) and ds.test_x.shape == (10, 32, 32, 3)
    assert ds.class_names == CINIC
    assert np.array_equal(np.bincount(ds.train_y), [2, 2, 2, 3, 2, 2, 2, 2, 2, 2])
    for x, y in zip(ds.test_x, ds.test_y):
        assert x[5, 5, 0] == 10 * y and tuple(x[0, 0]) == (1, 2, 3)
    gray = ds.train_x[ds.train_y == 3]
    assert any(np.all(g == 77) for g in gray)


def test_cinic10_corrupt_png(tmp_path):
    write_cinic(tmp_path)
    bad = tmp_path / "test" / "dog" / "img_0.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DataError) as err:
        load_dataset(DataConfig(dataset="cinic10", root=str(tmp_path)))
    assert_one_line_with(err, bad)


def test_cinic10_missing(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset(DataConfig(dataset="cinic10", root=str(tmp_path)))
    assert_one_line_with(err, tmp_path / "train")


# ---------------------------------------------------------------------- synthetic


def test_synthetic_deterministic():
    a = make_synthetic(600, 100, seed=0)
    b = make_synthetic(600, 100, seed=0)
    c = make_synthetic(600, 100, seed=1)
    assert np.array_equal(a.train_x, b.train_x) and np.array_equal(a.test_y, b.test_y)
    assert not np.array_equal(a.train_x, c.train_x)
    assert a.train_x.shape == (600, 28, 28, 1) and a.train_x.dtype == np.uint8
    assert np.array_equal(np.bincount(a.train_y), [60] * 10)
    assert not np.array_equal(a.train_x, a.test_x[:1].repeat(600, 0))


def test_synthetic_defaults_and_max_samples():
    ds = load_dataset(DataConfig(dataset="synthetic"))
    assert ds.train_x.shape == (6000, 28, 28, 1) and ds.test_x.shape == (1000, 28, 28, 1)
    assert load_dataset(DataConfig(dataset="synthetic"), seed=0) is ds
    small = load_dataset(DataConfig(dataset="synthetic", max_train_samples=250,
                                    max_test_samples=30), seed=0)
    assert len(small.train_y) == 250 and len(small.test_y) == 30


def test_synthetic_is_class_conditional():
    """Nearest class mean (on train) classifies most test samples: learnable."""
    ds = make_synthetic(2000, 500, seed=0)
    x = ds.train_x.reshape(len(ds.train_x), -1).astype(float)
    means = np.stack([x[ds.train_y == k].mean(0) for k in range(10)])
    t = ds.test_x.reshape(len(ds.test_x), -1).astype(float)
    pred = np.argmin(((t[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    acc = (pred == ds.test_y).mean()
    assert 0.8 < acc, acc


def test_stratified_subset():
    y = np.repeat(np.arange(4), [50, 30, 15, 5])
    idx = stratified_subset(y, 20, seed=3)
    assert len(idx) == 20 and np.all(np.diff(idx) > 0) and idx.dtype == np.int64
    assert np.array_equal(np.bincount(y[idx]), [10, 6, 3, 1])
    assert np.array_equal(idx, stratified_subset(y, 20, seed=3))
    assert not np.array_equal(idx, stratified_subset(y, 20, seed=4))
    assert np.array_equal(stratified_subset(y, 1000, seed=0), np.arange(100))


def test_download_failure_becomes_data_error(tmp_path, monkeypatch):
    import sys
    import types

    from fedssl.data import sources

    def boom(*args, **kwargs):
        raise RuntimeError("simulated network failure\nsecond line")

    fake = types.ModuleType("torchvision.datasets")
    fake.FashionMNIST = boom
    fake_utils = types.ModuleType("torchvision.datasets.utils")
    fake_utils.download_and_extract_archive = boom
    monkeypatch.setitem(sys.modules, "torchvision.datasets", fake)
    monkeypatch.setitem(sys.modules, "torchvision.datasets.utils", fake_utils)
    monkeypatch.setattr(sources.download, "network_available", lambda: True)
    with pytest.raises(DataError, match="simulated network failure") as err:
        load_dataset(DataConfig(dataset="cifar100", root=str(tmp_path)))
    assert_one_line_with(err, tmp_path / "cifar-100-binary")
    with pytest.raises(DataError, match="download of Fashion-MNIST failed") as err:
        load_dataset(DataConfig(root=str(tmp_path / "f")))
    assert_one_line_with(err, tmp_path / "f")
