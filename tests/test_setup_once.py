"""A run sets itself up once: one real ``run_experiment`` loads its dataset at most once
per process and builds its model and its strategy once per process before round 1
(the driver and each Ray client actor are processes of their own). The same run,
timed with ``FEDSSL_TIMING``, records its cold start in every process."""

from __future__ import annotations

import collections
import os
import textwrap
from pathlib import Path

import pytest

from fedssl.config import resolve
from fedssl.simulation import run_experiment
from tests.conftest import tiny

# Every call appends "<what> <pid>" to calls.log next to this file.
COUNTING = '''
import os
from pathlib import Path

import numpy as np
from flwr.serverapp.strategy import FedAvg

from fedssl.models import build_model

LOG = Path(__file__).with_name("calls.log")


def _note(what):
    with LOG.open("a") as f:
        f.write(f"{what} {os.getpid()}\\n")


def _images(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    x[np.arange(n), 2 + 8 * y, :] = 250
    return x, y


def data():
    _note("data")
    return (*_images(400, 0), *_images(200, 1), ["a", "b", "c"])


def net(num_classes, in_channels, image_size, cosine_head):
    _note("model")
    return build_model("cnn", num_classes, in_channels, cosine_head, image_size)


class CountingFedAvg(FedAvg):
    def __init__(self, *args, **kwargs):
        _note("strategy")
        super().__init__(*args, **kwargs)
'''


@pytest.fixture
def counting(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "plug"
    folder.mkdir()
    (folder / "fedssl_counting.py").write_text(textwrap.dedent(COUNTING))
    monkeypatch.syspath_prepend(str(folder))  # server.strategy is a module path, not a file
    monkeypatch.setenv("PYTHONPATH", f"{folder}:{Path(__file__).resolve().parents[1]}")
    return folder


def calls(folder: Path) -> dict[str, collections.Counter]:
    out: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for line in (folder / "calls.log").read_text().splitlines():
        what, pid = line.split()
        out[what][int(pid)] += 1
    return out


def test_a_run_loads_its_data_and_builds_its_model_and_strategy_once_per_process(tmp_path, counting,
                                                                                monkeypatch):
    timing = tmp_path / "timing.log"
    monkeypatch.setenv("FEDSSL_TIMING", str(timing))
    plug = counting / "fedssl_counting.py"
    cfg = resolve(overrides=tiny(tmp_path / "run", **{
        "data.dataset": f"{plug}:data", "model.name": f"{plug}:net",
        "server.strategy": "fedssl_counting:CountingFedAvg", "data.max_train_samples": 0,
        "data.max_test_samples": 0, "federation.rounds": 2}))
    summary = run_experiment(cfg, quiet=True)
    assert summary["status"] == "ok" and summary["rounds_completed"] == 2
    seen = calls(counting)
    # the driver (validation included) and the client actors loaded the data; none twice
    assert len(seen["data"]) >= 2, seen
    assert max(seen["data"].values()) == 1, seen
    assert max(seen["model"].values()) == 1, seen
    assert set(seen["model"]) <= set(seen["data"]), seen  # a process that builds the model has the data
    assert sum(seen["strategy"].values()) == 1, seen  # the driver's, built once

    check_timing(timing, workers=set(seen["model"]) - {os.getpid()})


def check_timing(path: Path, workers: set[int]) -> None:
    """The driver's events in order; each worker's cold start (its imports, then its
    runtime) before its first training, which falls between that round's send and replies."""
    from fedssl.timing import breakdown

    events: dict[int, dict[str, float]] = collections.defaultdict(dict)
    for line in path.read_text().splitlines():
        t, pid, event = line.split(" ", 2)
        events[int(pid)].setdefault(event, float(t))
    driver = events[os.getpid()]
    order = ["driver: run_experiment", "driver: dataset loaded and partitioned", "server: ServerApp started",
             "server: round 1 sent", "server: round 1 replies in", "server: round 2 sent",
             "driver: simulation ended, Ray shut down"]
    assert [driver[e] for e in order] == sorted(driver[e] for e in order), driver
    assert workers and workers <= set(events), (workers, set(events))
    for pid in workers:
        mine = events[pid]
        first = min((t, e) for e, t in mine.items() if e.startswith("worker: round "))
        rnd = first[1].split()[2].rstrip(",")  # "worker: round 2, 2 clients trained"
        assert mine["process start"] <= mine["ClientApp imported (torch, Flower, fedssl)"] \
            <= mine["worker: runtime built (dataset, model, algorithm)"] <= first[0], mine
        assert driver[f"server: round {rnd} sent"] <= first[0] <= driver[f"server: round {rnd} replies in"], \
            (mine, driver)
    assert f"pid {os.getpid()}" in breakdown(str(path))


def test_timing_breakdown_of_a_bad_file_is_one_line(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "t.txt"
    bad.write_text("not a timestamp line\n")
    for path in (bad, tmp_path / "missing.txt"):
        proc = subprocess.run([sys.executable, "-m", "fedssl.timing", str(path)], capture_output=True, text=True,
                              timeout=120)
        err = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(err) == 1 and err[0].startswith("error: "), proc.stderr
