"""Properties of fedssl.data.partition on synthetic label vectors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedssl.config import ConfigError, DataConfig
from fedssl.data import Partition, Shard, client_shard, load_dataset, make_partition
from fedssl.data.partition import cached_partition

K = 10


def labels_from_counts(counts, seed=0) -> np.ndarray:
    y = np.repeat(np.arange(len(counts)), counts).astype(np.int64)
    return np.random.default_rng(seed).permutation(y)


def check_invariants(part: Partition, labels: np.ndarray, cfg: DataConfig, k: int) -> None:
    n, c = len(labels), cfg.num_clients
    s = cfg.seen_classes or k
    assert len(part.shards) == c
    assert part.num_seen == s
    everything = []
    for shard in part.shards:
        for arr in (shard.labeled, shard.unlabeled):
            assert arr.dtype == np.int64
            assert np.all(np.diff(arr) > 0), "indices sorted and unique"
            everything.append(arr)
        assert len(shard.labeled) + len(shard.unlabeled) >= 1, "no empty client"
        # labels only on seen classes
        assert np.all(labels[shard.labeled] < s)
        seen_here = int(np.sum(labels[shard.unlabeled] < s)) + len(shard.labeled)
        if seen_here:
            expect = max(1, int(np.floor(cfg.labeled_ratio * seen_here + 0.5 + 1e-9)))
            assert len(shard.labeled) == expect
            lab = np.bincount(labels[shard.labeled], minlength=k)
            tot = lab + np.bincount(labels[shard.unlabeled], minlength=k)
            fl = np.floor(cfg.labeled_ratio * tot[:s] + 1e-9)
            assert np.all((lab[:s] >= fl) & (lab[:s] <= fl + 1))
        else:
            assert len(shard.labeled) == 0
    allidx = np.concatenate(everything)
    assert len(allidx) == n, "disjoint across clients and labeled/unlabeled"
    assert np.array_equal(np.sort(allidx), np.arange(n)), "complete"
    # unseen presence bookkeeping
    holders = np.zeros(k, dtype=int)
    for shard in part.shards:
        present = np.unique(labels[np.concatenate([shard.labeled, shard.unlabeled])])
        holders[present] += 1
    assert part.local_unseen == tuple(u for u in range(s, k) if holders[u] >= 2)
    assert part.global_unseen == tuple(u for u in range(s, k) if holders[u] == 1)


@st.composite
def cases(draw):
    scheme = draw(st.sampled_from(["iid", "dirichlet", "pathological", "openworld"]))
    counts = draw(st.lists(st.integers(30, 80), min_size=K, max_size=K))
    seen = draw(st.integers(0, K))
    unseen = K - (seen or K)
    cfg = DataConfig(
        dataset="synthetic",
        partition=scheme,
        num_clients=draw(st.integers(1, 30)),
        alpha=draw(st.sampled_from([0.01, 0.05, 0.3, 1.0, 100.0])),
        classes_per_client=draw(st.integers(1, K)),
        labeled_ratio=draw(st.sampled_from([0.01, 0.05, 0.1, 0.37, 0.5, 1.0])),
        seen_classes=seen,
        globally_unseen=draw(st.integers(0, unseen)),
    )
    return cfg, labels_from_counts(counts, draw(st.integers(0, 3))), draw(st.integers(0, 2**31))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_partition_invariants(case):
    cfg, labels, seed = case
    s = cfg.seen_classes or K
    n_local = K - s - cfg.globally_unseen
    if cfg.partition == "openworld" and cfg.num_clients < 2 and n_local > 0:
        with pytest.raises(ConfigError, match="num_clients >= 2"):
            make_partition(labels, cfg, K, seed)
        return
    if cfg.partition == "pathological" and cfg.num_clients * cfg.classes_per_client > len(labels):
        with pytest.raises(ConfigError, match="classes_per_client"):
            make_partition(labels, cfg, K, seed)
        return
    part = make_partition(labels, cfg, K, seed)
    check_invariants(part, labels, cfg, K)
    assert make_partition(labels, cfg, K, seed) == part, "deterministic"
    if cfg.partition == "iid":
        sizes = [len(sh) for sh in part.shards]
        assert max(sizes) - min(sizes) <= 1
    if cfg.partition == "openworld":
        # every unseen class has samples here, so the split is exactly as configured
        assert len(part.global_unseen) == cfg.globally_unseen
        assert len(part.local_unseen) == n_local
        hosts = [next(i for i, sh in enumerate(part.shards)
                      if np.any(labels[sh.unlabeled] == u)) for u in part.global_unseen]
        if cfg.globally_unseen <= cfg.num_clients:
            assert len(set(hosts)) == len(hosts), "globally unseen on distinct clients"


def test_different_seeds_differ():
    labels = labels_from_counts([100] * K)
    for scheme in ("iid", "dirichlet", "pathological", "openworld"):
        cfg = DataConfig(partition=scheme, num_clients=10, seen_classes=6, globally_unseen=2)
        a, b = make_partition(labels, cfg, K, 0), make_partition(labels, cfg, K, 1)
        assert a != b, scheme
        assert a == make_partition(labels, cfg, K, 0)


def test_dirichlet_1000_clients_small_alpha():
    labels = labels_from_counts([6000] * K)
    cfg = DataConfig(partition="dirichlet", num_clients=1000, alpha=0.05)
    part = make_partition(labels, cfg, K, seed=0)
    check_invariants(part, labels, cfg, K)
    # label skew: most clients are dominated by one class
    dominant = [np.bincount(labels[np.r_[sh.labeled, sh.unlabeled]], minlength=K).max()
                / len(sh) for sh in part.shards]
    assert np.median(dominant) > 0.8


def test_dirichlet_large_alpha_is_near_balanced():
    labels = labels_from_counts([1000] * K)
    cfg = DataConfig(partition="dirichlet", num_clients=10, alpha=1000.0)
    sizes = [len(sh) for sh in make_partition(labels, cfg, K, 0).shards]
    assert max(sizes) < 1.2 * min(sizes)


def test_pathological_classes_per_client():
    labels = labels_from_counts([100] * K)  # 20 shards of 50: each shard one class
    cfg = DataConfig(partition="pathological", num_clients=10, classes_per_client=2)
    part = make_partition(labels, cfg, K, 3)
    for sh in part.shards:
        assert len(sh) == 100
        assert len(np.unique(labels[np.r_[sh.labeled, sh.unlabeled]])) <= 2


def test_non_openworld_unseen_follow_scheme():
    labels = labels_from_counts([200] * K)
    cfg = DataConfig(partition="iid", num_clients=5, seen_classes=7)
    part = make_partition(labels, cfg, K, 0)
    assert part.local_unseen == (7, 8, 9) and part.global_unseen == ()
    cfg = dataclasses.replace(cfg, num_clients=1)
    part = make_partition(labels, cfg, K, 0)
    assert part.local_unseen == () and part.global_unseen == (7, 8, 9)


def test_openworld_single_client_all_global_is_fine():
    labels = labels_from_counts([50] * K)
    cfg = DataConfig(partition="openworld", num_clients=1, seen_classes=6, globally_unseen=4)
    part = make_partition(labels, cfg, K, 0)
    assert part.global_unseen == (6, 7, 8, 9)


def test_more_clients_than_samples():
    labels = labels_from_counts([3] * K)
    cfg = DataConfig(partition="iid", num_clients=31)
    with pytest.raises(ConfigError, match=r"data.num_clients \(31\) exceeds the number "
                                          r"of training samples \(30\)"):
        make_partition(labels, cfg, K, 0)


def test_bad_seen_and_labels():
    labels = labels_from_counts([5] * K)
    with pytest.raises(ConfigError, match="globally_unseen"):
        make_partition(labels, DataConfig(seen_classes=8, globally_unseen=3), K, 0)
    with pytest.raises(ValueError, match="labels"):
        make_partition(labels, DataConfig(), 5, 0)


def test_shard_equality_and_readonly():
    a = Shard(np.array([1, 2]), np.array([3]))
    assert a == Shard(np.array([1, 2]), np.array([3]))
    assert a != Shard(np.array([1]), np.array([2, 3]))
    part = make_partition(labels_from_counts([20] * K), DataConfig(num_clients=4), K, 0)
    with pytest.raises(ValueError):
        part.shards[0].labeled[0] = 0


def test_client_shard_cached():
    cfg = DataConfig(dataset="synthetic", partition="dirichlet", num_clients=8,
                     max_train_samples=800, max_test_samples=100)
    data, shard = client_shard(cfg, 0, 3)
    data2, shard2 = client_shard(cfg, 0, 3)
    assert data is data2 and shard is shard2
    assert data is load_dataset(cfg, 0)
    assert cached_partition(cfg, 0).shards[3] is shard
    assert len(data.train_y) == 800
    with pytest.raises(ConfigError, match="partition_id"):
        client_shard(cfg, 0, 8)


def test_dirichlet_repair_every_client_one_sample():
    labels = labels_from_counts([3] * K)
    cfg = DataConfig(partition="dirichlet", num_clients=30, alpha=0.01)
    part = make_partition(labels, cfg, K, 0)
    check_invariants(part, labels, cfg, K)
    assert all(len(sh) == 1 for sh in part.shards)
