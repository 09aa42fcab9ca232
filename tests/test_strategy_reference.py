"""The five strategies fedssl had before it drove Flower's strategy verbs give the
same metrics as before: values recorded on ``main`` before the rewrite (commit
e129cec) by ``python -m tests.test_strategy_reference --record``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from fedssl.config import resolve
from tests.conftest import tiny

FIXTURE = Path(__file__).parent / "fixtures" / "strategy_reference.json"
STRATEGIES = ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi")
KEYS = ("loss", "acc_all", "acc_seen", "clients")


def overrides(out: Path, name: str) -> dict[str, object]:
    # ordinary clients (no packing quirks), 3 rounds, fixed seed; eta small enough for
    # the adaptive optimisers to stay finite on a tiny CNN
    return tiny(out, **{"server.strategy": name, "federation.rounds": 3, "run.seed": 3,
                        "client.algorithm": "supervised", "server.eta": 0.01,
                        "server.proximal_mu": 0.1})


def run(out: Path, name: str) -> list[dict[str, float]]:
    from fedssl.simulation import run_experiment

    run_experiment(resolve(overrides=overrides(out, name)), quiet=True)
    import csv

    with open(out / "metrics.csv") as f:
        return [{k: float(r[k]) for k in ("round", *KEYS)} for r in csv.DictReader(f)]


@pytest.mark.parametrize("name", STRATEGIES)
def test_strategy_reproduces_recorded_metrics(tmp_path, name):
    want = json.loads(FIXTURE.read_text())[name]
    got = run(tmp_path / name, name)
    assert [r["round"] for r in got] == [r["round"] for r in want]
    for g, w in zip(got, want):
        for k in KEYS:
            assert g[k] == pytest.approx(w[k], rel=1e-6, abs=1e-6), (name, g["round"], k, g[k], w[k])


if __name__ == "__main__" and "--record" in sys.argv:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        FIXTURE.write_text(json.dumps({n: run(Path(d) / n, n) for n in STRATEGIES}, indent=1) + "\n")
    print(FIXTURE.read_text())
