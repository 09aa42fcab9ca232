"""Scale: deterministic sampling, packing, lazy per-client state, and joining a real
Ray head through ``federation.ray_address``."""

from __future__ import annotations

import csv
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedssl.config import resolve
from fedssl.sampling import REPLY_BYTES, auto_clients_per_node, pack, sample_clients
from fedssl.simulation import run_experiment
from fedssl.state import ClientStateStore
from tests.conftest import tiny

TIME_COLS = ("wall_s", "round_s", "t_")


def rows(out: Path) -> list[dict[str, str]]:
    with open(out / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if not k.startswith(TIME_COLS)} for r in csv.DictReader(f)]


@given(n=st.integers(1, 2000), frac=st.floats(0.001, 1.0), min_clients=st.integers(1, 50),
       seed=st.integers(0, 2**31), rnd=st.integers(1, 500))
@settings(max_examples=200, deadline=None)
def test_sampling_is_deterministic_sorted_distinct_and_sized(n, frac, min_clients, seed, rnd):
    a = sample_clients(n, frac, min_clients, seed, rnd)
    assert a == sample_clients(n, frac, min_clients, seed, rnd)
    assert a == sorted(set(a)) and all(0 <= i < n for i in a)
    assert len(a) == min(n, max(min_clients, round(n * frac)))


def test_sampling_varies_with_round_and_seed_and_covers_all_clients():
    draws = [tuple(sample_clients(1000, 0.05, 2, 0, r)) for r in range(1, 21)]
    assert len(set(draws)) == 20
    assert sample_clients(1000, 0.05, 2, 1, 1) != sample_clients(1000, 0.05, 2, 0, 1)
    hits = {i for r in range(1, 400) for i in sample_clients(100, 0.05, 2, 0, r)}
    assert hits == set(range(100))


@given(ids=st.lists(st.integers(0, 10_000), unique=True, max_size=300).map(sorted),
       cpn=st.integers(1, 40), nodes=st.integers(1, 64))
@settings(max_examples=200, deadline=None)
def test_pack_is_an_ordered_split_within_the_node_budget(ids, cpn, nodes):
    groups = pack(ids, cpn, nodes)
    assert [i for g in groups for i in g] == ids
    assert len(groups) <= nodes and all(groups)
    if len(ids) <= cpn * nodes:
        assert all(len(g) <= cpn for g in groups)


@given(n=st.integers(1, 5000), workers=st.integers(1, 64),
       model_bytes=st.sampled_from([0, 320_808, 44_700_000, 200_000_000]))
@settings(max_examples=200, deadline=None)
def test_auto_packing_keeps_workers_fed_and_replies_bounded(n, workers, model_bytes):
    cpn = auto_clients_per_node(n, workers, model_bytes)
    assert cpn >= 1
    if cpn > 1 and model_bytes:
        assert cpn * model_bytes <= REPLY_BYTES  # a reply never carries more than the budget
    messages = len(pack(list(range(n)), cpn, 10**6))
    assert messages >= min(n, workers)  # every worker gets a message each round
    cap = max(1, REPLY_BYTES // model_bytes) if model_bytes else 16
    # and no more messages than that needs, rounded up to a multiple of the workers
    assert messages <= max(2 * workers, math.ceil(math.ceil(n / cap) / workers) * workers)
    assert auto_clients_per_node(200, 2, 320_808) == 50  # the CNN at N=200 on 2 cores
    assert auto_clients_per_node(1000, 2, 320_808) == 167  # 6 messages, 3 per worker (not 5: 3 + 2)


def test_state_store_is_lazy_versioned_and_exact(tmp_path):
    store = ClientStateStore(tmp_path / "s")
    assert store.load(7, "run0") is None and store.ids() == []  # never trained: nothing on disk
    t1 = {"teacher.w": torch.randn(3, 4, dtype=torch.float32), "algo.count": torch.tensor([5], dtype=torch.int64)}
    t3 = {"teacher.w": torch.randn(3, 4, dtype=torch.float32), "algo.count": torch.tensor([9], dtype=torch.int64)}
    store.save(7, "run0", 1, t1)
    store.save(7, "run0", 3, t3, keep_round=1)
    assert store.ids() == [7]
    rnd, got = store.load(7, "run0")
    assert rnd == 3 and all(torch.equal(got[k], t3[k]) and got[k].dtype == t3[k].dtype for k in t3)
    rnd, got = store.load(7, "run0", before_round=3)  # a resume from the round-2 checkpoint sees round 1
    assert rnd == 1 and torch.equal(got["teacher.w"], t1["teacher.w"])
    store.save(7, "run0", 5, t1, keep_round=4)  # versions <= the checkpointed round are pruned to the newest
    assert store.newest(7).name == "run0.r000005.safetensors"
    with pytest.raises(FileNotFoundError):
        store.newest(8)
    assert [p.name for p in (tmp_path / "s").iterdir()] == ["client_00007"]  # one directory per client
    assert [p.name for p in sorted((tmp_path / "s" / "client_00007").iterdir())] == ["run0.r000003.safetensors",
                                                                                      "run0.r000005.safetensors"]


def test_sampled_clients_only_get_state_and_it_survives_unsampled_rounds(tmp_path):
    out = tmp_path / "run"
    run_id = run_experiment(resolve(overrides=tiny(out, **{
        "data.num_clients": 12, "federation.fraction_train": 0.25, "federation.min_clients": 2,
        "federation.rounds": 3, "client.local_steps": 2})), quiet=True)["run_id"]
    sampled = {i for r in (1, 2, 3) for i in sample_clients(12, 0.25, 2, 0, r)}
    assert all(r["clients"] == "3" for r in rows(out))
    on_disk = ClientStateStore(out / "client_state").ids()
    assert set(on_disk) == sampled and len(sampled) < 12
    for pid in sampled:  # the newest version is from the last round the client trained in
        last = max(r for r in (1, 2, 3) if pid in sample_clients(12, 0.25, 2, 0, r))
        assert ClientStateStore(out / "client_state").load(pid, run_id)[0] == last


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    """A real Ray head on 127.0.0.1 (`ray start --head --block`), stopped afterwards."""
    ray_bin = Path(sys.executable).with_name("ray")
    if not ray_bin.exists():
        pytest.skip("ray CLI not installed")
    port = _free_port()
    temp = Path("/tmp") / f"fedssl_ray_{os.getpid()}_{port}"  # short: Ray's socket paths are bounded
    proc = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats",
         f"--temp-dir={temp}", "--dashboard-agent-listen-port", str(_free_port()),
         "--object-manager-port", str(_free_port()), "--node-manager-port", str(_free_port()),
         "--min-worker-port", "0", "--max-worker-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"ray start exited {proc.returncode}: {proc.stdout.read()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("the Ray head did not listen within 120 s")
        yield address, temp
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp, ignore_errors=True)


def test_joins_a_real_ray_head_through_ray_address(tmp_path, ray_head):
    import ray

    address, temp = ray_head
    workers_before = set(temp.glob("session_*/logs/python-core-worker-*.log"))
    over = tiny(tmp_path / "local", **{"client.algorithm": "supervised", "data.labeled_ratio": 1.0})
    cluster = run_experiment(resolve(overrides={**over, "run.out_dir": str(tmp_path / "cluster"),
                                                "federation.ray_address": address}), quiet=True)
    # the clients ran in worker processes the head spawned
    assert set(temp.glob("session_*/logs/python-core-worker-*.log")) - workers_before
    assert not ray.is_initialized()  # the driver disconnected; the cluster lives on
    assert cluster["status"] == "ok" and cluster["final"]["round"] == 2
    local = run_experiment(resolve(overrides=over), quiet=True)
    assert rows(tmp_path / "cluster") == rows(tmp_path / "local")  # same seed, same metrics
    assert local["final"]["acc_all"] == cluster["final"]["acc_all"]
