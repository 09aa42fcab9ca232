"""Flower Datasets partitioners by name (data.partition = "flwr:<Class>"): each runs a
2-round simulation and draws its label distribution; where Flower and fedssl do the
same thing, their class histograms over many clients match."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
from scipy import stats

from fedssl.config import resolve
from fedssl.data.flwr_partition import partitioner_names
from fedssl.data.partition import make_partition
from fedssl.data.plot import PARTITION_CSV, label_counts, read_counts_csv
from fedssl.report.render import render_run
from tests.conftest import TINY_GRID_BASE, as_set_flags, assert_bad_input, run_cli, tiny

# Arguments for every sample partitioner flwr-datasets ships, on 600 samples of 10
# classes: (data.partition_params, data.num_clients). A partitioner missing here fails
# test_every_partitioner_is_covered, so a new flwr-datasets release is noticed.
PARAMS = {
    "ContinuousPartitioner": ("strictness = 0.5", 4),
    "DirichletPartitioner": ("alpha = 1.0", 4),
    "DistributionPartitioner": ("distribution_array = [" + ", ".join(["[1.0, 1.0]"] * 10) + "], "
                                "num_unique_labels_per_partition = 2, preassigned_num_samples_per_label = 5", 10),
    "ExponentialPartitioner": ("", 4),
    "GroupedNaturalIdPartitioner": ("group_size = 3", 4),  # natural id = the label
    "IidPartitioner": ("", 4),
    "InnerDirichletPartitioner": ("partition_sizes = [150, 150, 150, 150], alpha = 1.0", 4),
    "LinearPartitioner": ("", 4),
    "NaturalIdPartitioner": ("", 10),  # one client per class
    "PathologicalPartitioner": ("num_classes_per_partition = 2", 4),
    "ShardPartitioner": ("num_shards_per_partition = 2", 4),
    "SizePartitioner": ("partition_sizes = [100, 100, 150, 150]", 4),
    "SquarePartitioner": ("", 4),
}


def test_every_partitioner_is_covered():
    assert sorted(PARAMS) == partitioner_names()


def test_every_flower_partitioner_runs_by_name_in_a_two_round_simulation(tmp_path):
    axis = ", ".join(f'["flwr:{n}", {p!r}, {c}]' for n, (p, c) in PARAMS.items()).replace("'", '"')
    grid = tmp_path / "grid.toml"
    grid.write_text('[base]\n"data.dataset" = "synthetic"\n' + TINY_GRID_BASE.replace('"data.num_clients" = 2\n', "").replace('"data.partition" = "iid"\n', "")
                    + '"federation.min_clients" = 2\n"client.algorithm" = "supervised"\n'
                    + f'\n[axes]\n"data.partition+data.partition_params+data.num_clients" = [{axis}]\n')
    bench = tmp_path / "bench"
    proc = run_cli("bench", "--grid", str(grid), "--out", str(bench), "--quiet", timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = pd.read_csv(bench / "results.csv")
    assert len(results) == len(PARAMS) and (results["status"] == "ok").all(), results
    for run_dir in sorted((bench / "runs").iterdir()):
        metrics = pd.read_csv(run_dir / "metrics.csv")
        assert list(metrics["round"]) == [1, 2]
        counts = read_counts_csv(run_dir / PARTITION_CSV)
        cfg = resolve(str(run_dir / "config.toml"))
        assert counts.shape[0] == cfg.data.num_clients and counts.sum() > 0, run_dir.name
        assert render_run(run_dir)["partition"].stat().st_size > 1000


def test_data_plot_draws_a_flower_partition(tmp_path):
    out = tmp_path / "shard.png"
    proc = run_cli("data", "plot", "--out", str(out), *as_set_flags(
        {"data.dataset": "synthetic", "data.max_train_samples": 1200, "data.num_clients": 6,
         "data.partition": "flwr:ShardPartitioner", "data.partition_params": "num_shards_per_partition = 2"}))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    counts = read_counts_csv(out.with_suffix(".csv"))
    assert counts.shape == (6, 10, 2) and counts.sum() == 1200
    # two label-sorted shards of 100 per client; a shard spans at most 2 classes (120 samples each)
    assert ((counts.sum(axis=2) > 0).sum(axis=1) <= 4).all()


@pytest.mark.parametrize(("partition", "params", "needle"), [
    ("flwr:DirichletPartitionr", "alpha = 1.0", "did you mean 'DirichletPartitioner'"),
    ("flwr:DirichletPartitioner", "alpha = 1.0, beta = 2", "DirichletPartitioner has no parameter 'beta'"),
    ("flwr:DirichletPartitioner", "", "DirichletPartitioner needs alpha"),
    ("flwr:DirichletPartitioner", "alpha = 1.0, num_partitions = 3", "num_partitions is fedssl's to set"),
    ("flwr:SizePartitioner", "partition_sizes = [1, -1, 1, 1]", "data.partition=flwr:SizePartitioner"),
    ("flwr:Dirichlet Partitioner", "", "unknown partition"),
])
def test_bad_partitioner_or_parameter_is_a_one_line_error(tmp_path, partition, params, needle):
    proc = run_cli("run", *as_set_flags(tiny(tmp_path / "run", **{"data.partition": partition,
                                                                 "data.partition_params": params})), timeout=300)
    assert_bad_input(proc, needle)


def _histograms(partition: str, params: str, labels: np.ndarray, clients: int) -> np.ndarray:
    cfg = resolve(None, {"data.partition": partition, "data.partition_params": params,
                         "data.num_clients": clients, "data.alpha": 0.5, "data.classes_per_client": 2})
    return label_counts(make_partition(labels, cfg.data, 10, seed=0), labels, 10).sum(axis=2)


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    y = np.repeat(np.arange(10), 3000)  # Fashion-MNIST's train split: 10 balanced classes
    np.random.default_rng(1).shuffle(y)
    return y


@pytest.mark.parametrize(("ours", "flower", "params"), [
    ("iid", "IidPartitioner", ""),
    ("dirichlet", "DirichletPartitioner", "alpha = 0.5, min_partition_size = 0"),
    ("pathological", "ShardPartitioner", "num_shards_per_partition = 2"),
])
def test_flower_and_fedssl_give_the_same_class_histograms(labels, ours, flower, params):
    """Over 100 clients, (client, class) counts and classes per client come from one distribution."""
    a = _histograms(ours, "", labels, 100)
    b = _histograms(f"flwr:{flower}", params, labels, 100)
    assert a.sum() == b.sum() == len(labels)
    assert stats.ks_2samp(a.ravel(), b.ravel()).pvalue > 0.01
    classes_a, classes_b = (a > 0).sum(axis=1), (b > 0).sum(axis=1)
    assert abs(classes_a.mean() - classes_b.mean()) < 0.5
    assert abs(a.sum(axis=1).std() - b.sum(axis=1).std()) <= 0.25 * max(a.sum(axis=1).std(), 1.0)


def test_flowers_pathological_partitioner_differs_from_mcmahans_shards(labels):
    """Flower's PathologicalPartitioner gives every client exactly its classes but unequal
    sizes; fedssl's pathological (McMahan's shards, like Flower's ShardPartitioner) gives
    equal sizes, some clients with fewer classes."""
    ours = _histograms("pathological", "", labels, 100)
    flower = _histograms("flwr:PathologicalPartitioner", "num_classes_per_partition = 2", labels, 100)
    assert ((flower > 0).sum(axis=1) == 2).all() and ((ours > 0).sum(axis=1) <= 2).all()
    assert ours.sum(axis=1).std() == 0 and flower.sum(axis=1).std() > 10


def test_samples_a_flower_partitioner_leaves_out_are_on_no_client(labels):
    part_cfg = resolve(None, {"data.partition": "flwr:SizePartitioner", "data.num_clients": 3,
                              "data.partition_params": "partition_sizes = [10, 20, 30]"}).data
    part = make_partition(labels, part_cfg, 10, seed=0)
    assert [len(s) for s in part.shards] == [10, 20, 30]
    assert all(len(s.labeled) >= 1 for s in part.shards)  # fedssl's labeled split applies on top
