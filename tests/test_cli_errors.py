"""Every bad input named in the contract: one-line error, exit 2, before training."""

from __future__ import annotations

import gzip
import shutil

import pytest

from tests.conftest import FMNIST, as_set_flags, assert_bad_input, run_cli, tiny


@pytest.mark.parametrize("flag, needle", [
    ("data.dataset=mnist3d", "data.dataset"),
    ("client.algorithm=fixmatchh", "client.algorithm"),
    ("server.strategy=fedsgd", "server.strategy"),
    ("data.alpha=0", "data.alpha"),
    ("data.alpha=-1.5", "data.alpha"),
    ("data.seen_classes=11", "data.seen_classes"),
    ("data.globally_unseen=3", "data.globally_unseen"),
    ("federation.rounds=three", "federation.rounds"),
    ("data.num_clients=2.5", "data.num_clients"),
    ("client.lr=fast", "client.lr"),
    ("model.name=vgg", "model.name"),
    ("data.labeled_ratio=0", "data.labeled_ratio"),
    ("faults.clients=a,b", "faults.clients"),
    ("client.lr_schedule=step", "client.lr_schedule"),
    ("client.fixmatch.threshold=2", "client.fixmatch.threshold"),
    ("faults.start_round=0", "faults.start_round"),
])
def test_bad_values(tmp_path, capsys, flag, needle):
    # in-process for speed; test_bad_flags_and_files runs the real command line
    from fedssl.cli import main

    assert main(["run", "--out", str(tmp_path / "o"), "--set", flag]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert not (tmp_path / "o").exists()


def test_unknown_set_key_suggests(tmp_path):
    proc = run_cli("run", "--out", str(tmp_path / "o"), "--set", "client.learning_rate=0.1")
    assert_bad_input(proc, "client.learning_rate")
    proc = run_cli("run", "--out", str(tmp_path / "o"), "--set", "federation.round=3")
    assert_bad_input(proc, "federation.round", "did you mean 'federation.rounds'")


def test_bad_flags_and_files(tmp_path):
    assert_bad_input(run_cli("run", "--bogus"), "--bogus")
    assert_bad_input(run_cli("run", "--set", "nokey"), "nokey")
    assert_bad_input(run_cli("run", "--config", str(tmp_path / "none.toml")), "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[data\ndataset = 1\n")
    assert_bad_input(run_cli("run", "--config", str(bad)), "bad.toml")
    typo = tmp_path / "typo.toml"
    typo.write_text("[data]\ndatset = 'synthetic'\n")
    assert_bad_input(run_cli("run", "--config", str(typo)), "typo.toml", "data.datset")
    wrong = tmp_path / "wrong.toml"
    wrong.write_text("[federation]\nrounds = 'many'\n")
    assert_bad_input(run_cli("run", "--config", str(wrong)), "federation.rounds", "wrong.toml")


def test_more_clients_than_samples(tmp_path):
    proc = run_cli("run", *as_set_flags(tiny(tmp_path / "o", **{"data.num_clients": 5000})))
    assert_bad_input(proc, "num_clients")


def test_open_world_algorithm_needs_unseen_classes(tmp_path):
    proc = run_cli("run", *as_set_flags(tiny(tmp_path / "o", **{"client.algorithm": "orca"})))
    assert_bad_input(proc, "seen_classes")


def test_missing_and_corrupt_dataset_files(tmp_path):
    missing = tmp_path / "missing"
    proc = run_cli("run", "--set", "data.dataset=cifar10", "--set", f"data.root='{missing}'",
                   "--out", str(tmp_path / "o"))
    assert_bad_input(proc)
    if not FMNIST.exists():
        pytest.skip("no Fashion-MNIST files to corrupt")
    root = tmp_path / "fm"
    root.mkdir()
    for f in FMNIST.glob("*.gz"):
        shutil.copy(f, root / f.name)
    # truncate the train images
    data = gzip.open(root / "train-images-idx3-ubyte.gz").read()
    with gzip.open(root / "train-images-idx3-ubyte.gz", "wb") as g:
        g.write(data[: len(data) // 3])
    proc = run_cli("run", "--set", f"data.root='{root}'", "--out", str(tmp_path / "o"))
    assert_bad_input(proc, "train-images-idx3-ubyte")
    # wrong magic number in the labels
    lab = gzip.open(root / "t10k-labels-idx1-ubyte.gz").read()
    with gzip.open(root / "train-images-idx3-ubyte.gz", "wb") as g:
        g.write(data)
    with gzip.open(root / "t10k-labels-idx1-ubyte.gz", "wb") as g:
        g.write(b"\x00\x00\x09\x99" + lab[4:])
    proc = run_cli("run", "--set", f"data.root='{root}'", "--out", str(tmp_path / "o"))
    assert_bad_input(proc, "t10k-labels-idx1-ubyte")
    assert not (tmp_path / "o" / "metrics.csv").exists()


def test_data_export_and_plot_refuse_to_overwrite_without_the_flag(tmp_path, capsys):
    # in-process: the same entry point as the command line, no subprocess start
    from fedssl.cli import main

    flags = ["--set", "data.dataset=synthetic", "--set", "data.num_clients=2", "--set", "data.max_train_samples=200",
             "--quiet"]
    shards, fig = tmp_path / "shards", tmp_path / "p.png"
    for cmd, out in (("export", shards), ("plot", fig)):
        assert main(["data", cmd, "--out", str(out), *flags]) == 0
        before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
        assert main(["data", cmd, "--out", str(out), *flags]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and "--overwrite" in err[0], err
        assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == before  # nothing touched
        assert main(["data", cmd, "--out", str(out), "--overwrite", *flags]) == 0
