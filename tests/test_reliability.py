"""Faults, garbage updates, crash-and-resume and long-run health, with real Flower runs."""

from __future__ import annotations

import csv
import errno
import json
import os
from pathlib import Path

import pytest

from fedssl import runlog
from fedssl.config import resolve
from fedssl.simulation import run_experiment
from fedssl.state import ClientStateStore
from tests.conftest import as_set_flags, assert_bad_input, kill9_after_checkpoint, run_cli, tiny

TIME_COLS = ("wall_s", "round_s", "t_")


def rows(out: Path) -> list[dict[str, str]]:
    with open(out / "metrics.csv") as f:
        return list(csv.DictReader(f))


def no_time(rs: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if not k.startswith(TIME_COLS)} for r in rs]


def learnable(out: Path, **extra: object) -> dict[str, object]:
    return tiny(out, **{"client.algorithm": "supervised", "data.labeled_ratio": 1.0,
                        "data.num_clients": 5, "federation.rounds": 5, "client.local_steps": 40,
                        "client.batch_size": 32, "client.lr": 0.05, **extra})


def test_nan_client_is_rejected_and_the_model_is_not_poisoned(tmp_path):
    faulty = run_experiment(resolve(overrides=learnable(
        tmp_path / "nan", **{"faults.mode": "nan", "faults.clients": "4"})), quiet=True)
    clean = run_experiment(resolve(overrides=learnable(tmp_path / "clean", **{"data.num_clients": 4})),
                           quiet=True)
    for r in rows(tmp_path / "nan"):
        assert r["rejected_updates"] == "1" and r["clients"] == "4", r
    assert faulty["status"] == "ok"
    assert abs(faulty["final"]["acc_all"] - clean["final"]["acc_all"]) <= 0.02, (faulty["final"], clean["final"])
    assert faulty["final"]["acc_all"] > 0.5


def test_all_updates_rejected_keeps_the_global_model(tmp_path):
    out = tmp_path / "all"
    summary = run_experiment(resolve(overrides=tiny(out, **{"faults.mode": "nan", "faults.clients": "0,1,2,3"})),
                             quiet=True)
    assert summary["status"] == "no_client_update", summary["status"]  # not "ok": nothing was learned
    rs = rows(out)
    assert all(r["status"] == "no_update" and r["rejected_updates"] == "4" for r in rs)
    assert rs[0]["acc_all"] == rs[1]["acc_all"] and rs[0]["loss"] == rs[1]["loss"]


@pytest.mark.parametrize("clients_per_node", [0, 1])
def test_crashing_and_wrong_shape_clients_are_excluded(tmp_path, clients_per_node):
    out = tmp_path / "c"
    summary = run_experiment(resolve(overrides=tiny(out, **{
        "faults.mode": "crash,shape", "faults.clients": "1,2",
        "federation.clients_per_node": clients_per_node})), quiet=True)
    assert summary["status"] == "ok" and summary["final"]["round"] == 2
    for r in rows(out):
        assert r["rejected_updates"] == "1" and r["failed_clients"] == "1" and r["clients"] == "2", r


@pytest.mark.parametrize("checkpoint_every,fraction", [(1, 1.0), (2, 0.5)])
def test_kill9_then_resume_equals_uninterrupted(tmp_path, checkpoint_every, fraction):
    # (2, 0.5): clients skip rounds, so a resume from round 2 needs each client's state
    # at or before round 2 while newer files of the killed process lie next to it.
    over = tiny(tmp_path / "killed", **{"federation.rounds": 4, "client.local_steps": 30,
                                        "run.checkpoint_every": checkpoint_every,
                                        "federation.fraction_train": fraction, "federation.min_clients": 2})
    killed = tmp_path / "killed"
    ckpt = kill9_after_checkpoint(over, killed)
    run_id = ckpt["run_id"]
    assert all(rid == run_id for _, rid, *_ in ClientStateStore(killed / "client_state").files())
    resumed = run_cli("run", "--resume", str(killed), "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # the resumed run is the same run: it read and wrote its own client state only
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["run_id"] == run_id
    assert len(summary["round_train_s"]) == 4  # the killed process's rounds come back from the checkpoint
    assert {rid for _, rid, *_ in ClientStateStore(killed / "client_state").files()} == {run_id}
    run_experiment(resolve(overrides={**over, "run.out_dir": str(tmp_path / "straight")}), quiet=True)
    got, want = rows(killed), rows(tmp_path / "straight")
    assert [r["round"] for r in got] == ["1", "2", "3", "4"]  # no duplicate or missing round
    assert no_time(got) == no_time(want)


def test_resume_and_overwrite_guards(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "metrics.csv").write_text("round\n1\n")
    proc = run_cli("run", *as_set_flags(tiny(out)))
    assert_bad_input(proc, "--overwrite")
    assert (out / "metrics.csv").read_text() == "round\n1\n"  # nothing lost
    (out / "config.toml").write_text(resolve(overrides=tiny(out)).to_toml())
    assert_bad_input(run_cli("run", "--resume", str(out), "--set", "federation.rounds=7"),
                     "different config", "federation.rounds")
    assert_bad_input(run_cli("run", "--resume", str(tmp_path / "nothing")), "config.toml")


def test_diverging_model_stops_cleanly_and_keeps_last_good_checkpoint(tmp_path):
    out = tmp_path / "d"
    summary = run_experiment(resolve(overrides=tiny(out, **{
        "federation.rounds": 4, "faults.mode": "scale", "faults.scale": 1e4, "faults.clients": "0,1,2,3",
        "faults.rate": 1.0, "run.checkpoint_every": 1})), quiet=True)
    assert summary["status"] == "diverged"
    rs = rows(out)
    assert rs[-1]["status"] == "diverged"
    ckpt = runlog.load_checkpoint(out)
    assert ckpt is None or ckpt["round"] < int(rs[-1]["round"])


def test_collapse_after_learning_is_reported_once(tmp_path, caplog):
    """A model that learned (rounds 1-3) and then gives one answer to every test sample
    gets one warning, although its finite loss is no divergence here. An untrained
    model's one-class answers at round 1 are no collapse."""
    caplog.set_level("WARNING", logger="fedssl")
    summary = run_experiment(resolve(overrides=learnable(tmp_path / "c", **{
        "faults.mode": "scale", "faults.scale": -8.0, "faults.clients": "0,1,2,3,4", "faults.rate": 1.0,
        "faults.start_round": 4, "server.divergence_factor": 1e9})), quiet=True)
    assert summary["status"] == "ok"
    share = [float(r["top_class_share"]) for r in rows(tmp_path / "c")]
    assert max(share[:3]) < 0.5 and share[-1] >= 0.95, share
    warned = [r.getMessage() for r in caplog.records if "collapsed" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("round 5:") and "client.lr = 0.05" in warned[0]

    caplog.clear()
    run_experiment(resolve(overrides=tiny(tmp_path / "t")), quiet=True)
    assert float(rows(tmp_path / "t")[0]["top_class_share"]) >= 0.95  # untrained: one answer
    assert not [r for r in caplog.records if "collapsed" in r.getMessage()]


def test_failed_write_leaves_previous_file_intact(tmp_path, monkeypatch):
    target = tmp_path / "metrics.csv"
    runlog.write_atomic(target, "old\n")

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError):
        runlog.write_atomic(target, "new\n")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]  # no temp file left


def test_hanging_client_is_dropped_at_the_round_timeout(tmp_path):
    # Round 1 is clean (Ray's cold start must not count against the timeout); from
    # round 2 client 3 sleeps past round_timeout. Its node is dropped and the round
    # is aggregated from the three clients that replied.
    out = tmp_path / "h"
    summary = run_experiment(resolve(overrides=tiny(out, **{
        "faults.mode": "hang", "faults.clients": "3", "faults.start_round": 2,
        "federation.round_timeout": 45.0, "federation.clients_per_node": 1})), quiet=True)
    assert summary["status"] == "ok" and summary["final"]["round"] == 2
    r1, r2 = rows(out)
    assert r1["clients"] == "4" and r1["failed_clients"] == "0", r1
    assert r2["clients"] == "3" and r2["failed_clients"] == "1" and r2["status"] != "no_update", r2
