"""Incremental FedSSL ([stream]) in real Flower simulations: the accuracy matrix is
filled, the client memory is reported, and kill -9 + resume mid-stage is exact with a
replay buffer and the previous stage's model in the client state."""

from __future__ import annotations

import csv
import json
import math
import os

import pytest

from fedssl.config import resolve
from fedssl.simulation import run_experiment
from tests.conftest import ROOT, kill9_after_checkpoint, run_cli, tiny

TIMING = ("wall_s", "round_s")


def rows(out):
    with open(out / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if k not in TIMING and not k.startswith("t_")} for r in csv.DictReader(f)]


def test_two_stage_simulation_fills_the_accuracy_matrix(tmp_path):
    out = tmp_path / "s"
    summary = run_experiment(resolve(overrides=tiny(out, **{
        "client.algorithm": "replay", "federation.rounds": 4, "stream.stages": 2, "stream.rounds_per_stage": 2,
        "stream.domains": "rotate,inverse", "stream.buffer": 20})), quiet=True)
    s = summary["stream"]
    assert s["domains"] == ["rotate:2", "inverse:1"]
    assert len(s["R"]) == 2 and all(len(r) == 2 for r in s["R"])
    assert all(0 <= a <= 1 for r in s["R"] for a in r) and len(s["baseline"]) == 2
    for k in ("final_avg_acc", "avg_incremental_acc", "forgetting", "bwt", "fwt"):
        assert math.isfinite(s[k]), k
    assert s["final_avg_acc"] == sum(s["R"][1]) / 2
    assert s["max_peak_samples"] > 0 and len(s["client_peak_bytes"]) == 4
    assert all(len(p) == 2 and min(p) > 0 for p in s["client_passes_per_stage"].values())
    got = rows(out)
    assert [r["stage"] for r in got] == ["0", "0", "1", "1"]
    # the R rows are the stage ends' per-domain accuracies
    assert [float(got[1]["acc_domain_0"]), float(got[1]["acc_domain_1"])] == pytest.approx(s["R"][0], rel=1e-5)
    assert float(got[3]["stream_final_avg_acc"]) == pytest.approx(s["final_avg_acc"], rel=1e-5)
    # the buffer holds at most stream.buffer samples on every client, every round
    assert all(float(r["stream_buffer_samples_max"]) <= 20 for r in got)
    assert float(got[-1]["stream_buffer_samples_max"]) == 20


USER_ALGO = '''
from fedssl.algorithms.lwf import LwF


class ReplayLwF(LwF):
    """LwF that also replays a reservoir buffer: a client state with both."""
    replay = "reservoir"
'''


def test_kill9_and_resume_mid_stage_is_exact(tmp_path, monkeypatch):
    (tmp_path / "stream_user_algo.py").write_text(USER_ALGO)
    # the user's file is importable by this process, the CLI's and Ray's workers
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{os.environ.get('PYTHONPATH', ROOT)}")
    monkeypatch.syspath_prepend(str(tmp_path))
    over = tiny(tmp_path / "killed", **{
        "client.algorithm": "stream_user_algo:ReplayLwF", "federation.rounds": 4, "stream.stages": 2,
        "stream.rounds_per_stage": 2, "stream.buffer": 15, "client.local_steps": 20, "run.checkpoint_every": 1})
    killed = tmp_path / "killed"
    kill9_after_checkpoint(over, killed, at_round=3)  # stage 1 began at round 3
    resumed = run_cli("run", "--resume", str(killed), "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run_experiment(resolve(overrides={**over, "run.out_dir": str(tmp_path / "straight")}), quiet=True)
    got, want = rows(killed), rows(tmp_path / "straight")
    assert [r["round"] for r in got] == ["1", "2", "3", "4"]
    assert got == want
    a, b = (json.loads((d / "summary.json").read_text())["stream"] for d in (killed, tmp_path / "straight"))
    assert a["R"] == b["R"] and a["client_passes_per_stage"] == b["client_passes_per_stage"]


STREAM_KEYS = {"client.algorithm": "fedmobile", "federation.rounds": 4, "stream.stages": 2,
               "stream.rounds_per_stage": 2, "stream.domains": "contrast,inverse"}


def test_stream_under_flwr_run(tmp_path):
    """``flwr run .``: the stage travels in each round's config; the matrix fills."""
    from tests.test_flwr_run import flwr_run

    keys = {**STREAM_KEYS, "federation.rounds": 2, "stream.rounds_per_stage": 1}
    summary = flwr_run(tmp_path, resolve(overrides=tiny(tmp_path / "run", **keys)))
    s = summary["stream"]
    assert s["domains"] == ["contrast:4", "inverse:1"] and len(s["R"]) == 2 and all(len(r) == 2 for r in s["R"])
    assert all(len(p) == 2 and min(p) > 0 for p in s["client_passes_per_stage"].values())


def test_stream_on_real_supernodes_equals_the_simulation(tmp_path):
    """``fedssl deploy local``: real SuperLink + SuperNodes through ``flwr run``. A node
    needs nothing but the round's config to know its stage: the run equals the simulation."""
    import uuid

    from tests.test_deploy import RUN_TIMEOUT, SMALL, kill_tagged, set_flags

    keys = {**{k: v for k, v in SMALL.items() if k != "data.num_clients"}, **STREAM_KEYS}
    tag, dep, sim = uuid.uuid4().hex, tmp_path / "deploy", tmp_path / "sim"
    try:
        res = run_cli("deploy", "local", "--clients", "3", "--out", str(dep), "--quiet", *set_flags(keys),
                      timeout=RUN_TIMEOUT + 120, env={"FEDSSL_DEPLOY_TAG": tag})
    finally:
        kill_tagged(tag)
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-3000:])
    sim_res = run_cli("run", "--out", str(sim), "--quiet", *set_flags({**keys, "data.num_clients": 3}))
    assert sim_res.returncode == 0, sim_res.stderr[-3000:]
    a, b = (json.loads((d / "summary.json").read_text())["stream"] for d in (dep, sim))
    assert len(a["R"]) == 2 and sum(a["R"], []) == pytest.approx(sum(b["R"], []), abs=1e-4)
    for ra, rb in zip(rows(dep), rows(sim)):  # and every round's loss: the same training
        assert float(ra["loss"]) == pytest.approx(float(rb["loss"]), abs=1e-4), (ra["round"], ra["loss"], rb["loss"])
    assert a["client_passes_per_stage"] == b["client_passes_per_stage"]
    assert [r["stage"] for r in rows(dep)] == ["0", "0", "1", "1"]
