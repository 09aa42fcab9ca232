"""fedssl bench's warm worker: cells forked from one long-lived worker that keeps the
imports and a Ray cluster warm give exactly the results of the same cells run alone
with ``fedssl run``; a cell killed by a signal, or a worker killed outright, is
recorded as failed, the worker is replaced and the grid goes on.

Real tiny grids on synthetic data, real processes, real Flower simulations."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from fedssl import bench, report
from tests.conftest import ROOT, TINY_GRID_BASE, live_processes, run_cli, wait_for

TINY = '"data.dataset" = "synthetic"' + TINY_GRID_BASE
TIMING = ("wall_s", "round_s")


def _grid(tmp: Path, axes: str) -> Path:
    path = tmp / "grid.toml"
    path.write_text(f"[base]\n{TINY}\n[axes]\n{axes}\n")
    return path


def _non_timing(run: Path) -> tuple[pd.DataFrame, dict]:
    m = pd.read_csv(run / "metrics.csv")
    m = m[[c for c in m.columns if c not in TIMING and not c.startswith("t_")]]
    final = report.read_json(run / "summary.json")["final"]
    return m, {k: v for k, v in final.items() if k not in TIMING and not k.startswith("t_")}


def test_pooled_cells_equal_isolated_runs(tmp_path):
    """Three cells through one warm worker (two algorithms, two seeds: caches, RNG and
    client state of one cell would show in the next) against each cell's config run
    alone by `fedssl run` in a fresh process: every non-timing column identical."""
    grid = _grid(tmp_path, '"client.algorithm" = ["fixmatch", "meanteacher"]\n"run.seed" = [0, 1]')
    out = tmp_path / "bench"
    proc = run_cli("bench", "--grid", str(grid), "--out", str(out), "--quiet", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    g = bench.load_grid(grid, out)
    log = (out / "logs" / "worker.log").read_text()
    assert log.count("starting a Ray cluster") == 1, log  # one worker, one cluster, all cells
    for c in g.cells:
        assert "(in the bench's warm worker)" in (out / "logs" / f"{c.id}.stderr").read_text()
    for c in g.order()[:3]:
        alone = tmp_path / "alone" / c.id
        p = run_cli("run", "--quiet", "--config", str(out / "cells" / f"{c.id}.toml"), "--out", str(alone))
        assert p.returncode == 0, p.stderr[-3000:]
        (pm, pf), (am, af) = _non_timing(g.run_dir(c)), _non_timing(alone)
        assert list(pm.columns) == list(am.columns)
        pd.testing.assert_frame_equal(pm, am, check_exact=True)
        assert pf == af, c.id
        assert pf["round"] == 2


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def warm_worker(bench_pid: int) -> int | None:
    return next((k for k in live_processes(1, bench_pid) if "fedssl.bench.worker" in _cmdline(k)), None)


def _cell_process(bench_pid: int, cell_log: Path) -> tuple[int, int] | None:
    """(worker, the cell forked from it) while that cell runs: the worker's child whose
    stderr is the cell's log (a child of the worker with the worker's command line may
    also be a short-lived fork on its way to exec, e.g. starting Ray)."""
    w = warm_worker(bench_pid)
    if w is None:
        return None
    for k in live_processes(1, w):
        try:
            if os.readlink(f"/proc/{k}/fd/2") == str(cell_log):
                return w, k
        except OSError:
            continue
    return None


def test_killed_cell_and_killed_worker_are_isolated(tmp_path):
    """Cell 1's process gets SIGSEGV, the worker running cell 2 gets SIGKILL: both are
    recorded as failed like a crashed `fedssl run`, nothing of theirs is left running,
    a new worker runs cell 3 to the end."""
    grid = _grid(tmp_path, '"client.algorithm" = ["supervised"]\n"run.seed" = [0, 1, 2]')
    # cells long enough (seconds) to be killed mid-run on a fast machine
    grid.write_text(grid.read_text().replace('"federation.rounds" = 2', '"federation.rounds" = 4')
                    .replace('"client.local_steps" = 2', '"client.local_steps" = 20'))
    out = tmp_path / "bench"
    g = bench.load_grid(grid, out)
    c1, c2, c3 = g.order()
    logs = out / "logs"
    cmd = [sys.executable, "-m", "fedssl.cli", "bench", "--grid", str(grid), "--out", str(out), "--quiet"]
    with open(tmp_path / "err", "w") as err:
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
        try:
            w1, cell1 = wait_for(lambda: _cell_process(p.pid, logs / f"{c1.id}.stderr"), 300, "cell 1's process")
            time.sleep(1.0)
            os.kill(cell1, signal.SIGSEGV)
            w2, _ = wait_for(lambda: _cell_process(p.pid, logs / f"{c2.id}.stderr"), 300, "cell 2's process")
            time.sleep(1.0)
            os.kill(w2, signal.SIGKILL)
            rc = p.wait(timeout=600)
        finally:
            if p.poll() is None:
                p.kill()
    stderr = (tmp_path / "err").read_text()
    assert rc == bench.EXIT_FAILED_CELLS, stderr[-3000:]
    assert "Traceback" not in stderr
    assert w1 != w2, "the worker was not replaced after a cell died by a signal"
    assert live_processes(3, w1) == [] and live_processes(3, w2) == [], "a dead worker left processes behind"
    import tempfile

    assert not [d for w in (w1, w2) for d in Path(tempfile.gettempdir()).glob(f"fedssl-ray-{w}-*")], \
        "a dead worker's Ray temp dir was left behind"
    recs = {c.id: report.read_json(out / "cells" / f"{c.id}.json") for c in g.cells}
    assert recs[c1.id]["status"] == "failed" and recs[c1.id]["exit_code"] == -signal.SIGSEGV
    assert recs[c1.id]["error"].startswith("killed by SIGSEGV")
    assert recs[c2.id]["status"] == "failed" and recs[c2.id]["exit_code"] == -signal.SIGKILL
    assert recs[c2.id]["error"].startswith("killed by SIGKILL")
    assert recs[c3.id]["status"] == "ok"
    assert report.read_json(g.run_dir(c3) / "summary.json")["final"]["round"] == 4
    res = pd.read_csv(out / "results.csv")
    assert sorted(res.status) == ["failed", "failed", "ok"]
    # the retry (next invocation) runs the two failed cells and nothing else
    again = run_cli("bench", "--grid", str(grid), "--out", str(out), "--quiet", timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert all(report.read_json(out / "cells" / f"{c.id}.json")["status"] == "ok" for c in g.cells)


def test_fresh_process_flag_runs_cells_without_the_worker(tmp_path):
    """--fresh-process: each cell is its own `fedssl run` child, as before the pool."""
    grid = _grid(tmp_path, '"client.algorithm" = ["supervised"]')
    out = tmp_path / "bench"
    proc = run_cli("bench", "--grid", str(grid), "--out", str(out), "--quiet", "--fresh-process", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (c,) = bench.load_grid(grid, out).cells
    assert report.read_json(out / "cells" / f"{c.id}.json")["status"] == "ok"
    header = (out / "logs" / f"{c.id}.stderr").read_text().splitlines()[0]
    assert "-m fedssl.run_command --quiet --config" in header and "warm worker" not in header
    assert not (out / "logs" / "worker.log").exists()


def test_a_dataset_the_worker_cannot_preload_fails_in_its_own_cell(tmp_path):
    """The warm worker reads each cell's dataset before forking it. When it cannot, it
    says so in its log and still forks the cell, which fails with the dataset's own
    one-line error; the worker and the grid carry on."""
    missing = tmp_path / "missing"
    grid = tmp_path / "grid.toml"
    grid.write_text(f'[base]\n"data.root" = "{missing}"\n"federation.rounds" = 1\n[axes]\n"run.seed" = [0, 1]\n')
    out = tmp_path / "bench"
    proc = run_cli("bench", "--grid", str(grid), "--out", str(out), "--quiet", timeout=300,
                   env={"FEDSSL_NO_DOWNLOAD": "1"})
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    log = (out / "logs" / "worker.log").read_text()
    assert log.count(f"could not preload the dataset ['fashion-mnist', '{missing}']") == 2, log
    for c in bench.load_grid(grid, out).cells:
        rec = report.read_json(out / "cells" / f"{c.id}.json")
        assert rec["status"] == "failed" and rec["exit_code"] == 2, rec
        assert str(missing) in rec["error"] and "\n" not in rec["error"], rec
