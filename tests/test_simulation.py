"""Real Flower simulations (Ray backend) on small synthetic data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from fedssl.config import resolve
from fedssl.simulation import run_experiment
from tests.conftest import tiny

TIME_COLS = ("wall_s", "round_s", "t_")


def metrics(out: Path) -> list[dict[str, str]]:
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return [{k: v for k, v in r.items() if not k.startswith(TIME_COLS)} for r in rows]


def test_two_rounds_write_contract_files_and_seed_determinism(tmp_path):
    cfg = resolve(overrides=tiny(tmp_path / "a"))
    summary = run_experiment(cfg, quiet=True)
    out = tmp_path / "a"
    rows = metrics(out)
    assert [r["round"] for r in rows] == ["1", "2"]
    header = open(out / "metrics.csv").readline().strip().split(",")
    assert header[:8] == ["round", "loss", "acc_all", "acc_seen", "acc_unseen", "acc_local_unseen",
                          "acc_global_unseen", "wall_s"]
    for r in rows:
        assert 0.0 <= float(r["acc_all"]) <= 1.0 and r["acc_unseen"] == ""
        assert r["clients"] == "4" and r["rejected_updates"] == "0"
    assert summary["status"] == "ok" and summary["final"]["round"] == 2
    assert json.loads((out / "summary.json").read_text())["config"]["client"]["algorithm"] == "fixmatch"
    assert resolve(str(out / "config.toml")) == cfg
    # one EMA teacher per client on disk, after round 2
    assert sorted(p.name for p in (out / "client_state").iterdir())[-1].endswith(".r000002.safetensors")

    # same config and seed -> identical metrics; packing 1 client per node changes nothing
    run_experiment(cfg.replace(**{"run.out_dir": str(tmp_path / "b"), "federation.clients_per_node": 1}),
                   quiet=True)
    assert metrics(tmp_path / "b") == rows
    run_experiment(cfg.replace(**{"run.out_dir": str(tmp_path / "c"), "run.seed": 1}), quiet=True)
    assert metrics(tmp_path / "c") != rows


def test_supervised_learns(tmp_path):
    cfg = resolve(overrides=tiny(tmp_path, **{"client.algorithm": "supervised", "federation.rounds": 3,
                                               "data.labeled_ratio": 1.0, "client.local_steps": 30}))
    summary = run_experiment(cfg, quiet=True)
    assert summary["final"]["acc_all"] > 0.6, summary["final"]
