"""fedssl bench (resumable grid runner) and fedssl report (tables, plots, HTML).

Fast tests use hand-made run directories (metrics.csv / summary.json written with
fedssl.runlog, exactly as a run writes them); the end-to-end tests run a tiny real grid
(synthetic data, 2 configurations x 2 seeds, plus cells that fail at run time) once per
module and check it from several sides.
"""

from __future__ import annotations

import base64
import html.parser
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from fedssl import bench, report, runlog
from fedssl.cli import main
from fedssl.config import ConfigError
from tests.conftest import ROOT, TINY_GRID_BASE, assert_bad_input, live_processes, run_cli, wait_for

PNG = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- helpers


def write_grid(path: Path, base: str, axes: str) -> Path:
    path.write_text(f"[base]\n{base}\n\n[axes]\n{axes}\n")
    return path


def fake_bench(tmp: Path, open_world: bool = True, fail: bool = True, rounds: int = 4) -> Path:
    """A bench directory with hand-made runs (2 strategies x 2 algorithms x 3 seeds);
    cell 3 failed. Uses the bench's own layout code, no simulation."""
    grid = write_grid(tmp / "grid.toml", f"""
"data.dataset" = "synthetic"
"data.num_clients" = 5
"data.seen_classes" = {6 if open_world else 0}
"data.globally_unseen" = {2 if open_world else 0}
"data.partition" = "{'openworld' if open_world else 'dirichlet'}"
"federation.rounds" = {rounds}
""", """
"server.strategy" = ["fedavg", "fedprox"]
"client.algorithm" = ["supervised", "fixmatch"]
"run.seed" = [0, 1, 2]
""")
    out = tmp / "bench"
    g = bench.load_grid(grid, out)
    runner = bench.BenchRunner(g, quiet=True)
    runner.prepare()
    rng = random.Random(0)
    for i, c in enumerate(g.cells):
        if fail and i == 3:
            runner._write_record(c, status="failed", exit_code=1, error="RuntimeError: boom | pipe",
                                 cell_s=3.0)
            continue
        run = g.run_dir(c)
        run.mkdir(parents=True)
        rows = []
        for rnd in range(1, rounds + 1):
            acc = min(0.95, 0.2 * rnd + 0.05 * i / len(g.cells) + rng.random() * 0.03)
            row = {"round": rnd, "loss": 2.0 / rnd + rng.random() * 0.1, "wall_s": 3.0 * rnd + rng.random(),
                   "clients": 5, "rejected_updates": 0, "status": "", "acc_all": acc, "acc_seen": acc + 0.04}
            if open_world:
                row.update(acc_unseen=acc - 0.1, acc_local_unseen=acc - 0.05, acc_global_unseen=acc - 0.15,
                           acc_unseen_strict=acc - 0.2, discovered=float(rnd % 3))
            row.update({f"acc_class_{k}": min(1.0, max(0.0, acc + rng.uniform(-0.2, 0.2))) for k in range(10)})
            rows.append(row)
        runlog.write_metrics(run, rows)
        runlog.write_atomic(run / "config.toml", c.cfg.to_toml())
        final = rows[-1]
        runlog.write_json(run / "summary.json", {
            "status": "ok", "final": {k: v for k, v in final.items() if not k.startswith("acc_class_")},
            "per_class_accuracy": {str(k): final[f"acc_class_{k}"] for k in range(10)},
            "seen_classes": list(range(6 if open_world else 10)),
            "local_unseen_classes": [6, 7] if open_world else [],
            "global_unseen_classes": [8, 9] if open_world else [],
            "rounds_completed": rounds, "elapsed_s": final["wall_s"] + 1, "config": c.cfg.to_dict(),
            **({"confusion_matrix": {"output_of_class": list(range(10)), "counts": [
                [40 if j == k else rng.randrange(5) for j in range(10)] for k in range(10)]}}
               if open_world else {})})
        runner._write_record(c, status="ok", exit_code=0, error="", cell_s=final["wall_s"] + 5)
    return out


class _Imgs(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str | None] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.srcs.append(a.get("src"))
        if tag in ("link", "script") and (a.get("href") or a.get("src")):
            self.links.append(a.get("href") or a.get("src"))


def check_html_images(path: Path) -> int:
    """Every <img> is an embedded PNG data: URI; nothing is fetched from elsewhere."""
    p = _Imgs()
    p.feed(path.read_text())
    assert not p.links, p.links
    for src in p.srcs:
        assert src and src.startswith("data:image/png;base64,"), (src or "")[:80]
        assert base64.b64decode(src.split(",", 1)[1], validate=True).startswith(PNG)
    return len(p.srcs)


# ----------------------------------------------------------------- grid validation


BASE = '"data.dataset" = "synthetic"\n"data.num_clients" = 2'


@pytest.mark.parametrize("base, axes, needles", [
    ('"data.datset" = "synthetic"', '"run.seed" = [0]', ["grid.toml", "'data.datset'",
                                                        "did you mean 'data.dataset'"]),
    (BASE, '"client.algoritm" = ["fixmatch"]', ["grid.toml", "'client.algoritm'",
                                                "did you mean 'client.algorithm'"]),
    (BASE, '"run.seed" = 3', ["grid.toml", "run.seed", "list"]),
    (BASE, '"run.seed" = []', ["grid.toml", "run.seed", "list"]),
    (BASE, '"client.lr" = [0.1, "fast"]', ["client.lr", "'fast'"]),
    (BASE, '"server.strategy" = ["fedavg", "fedsgd"]', ["server.strategy", "'fedsgd'"]),
    (BASE, '"data.alpha" = [0.5, -1.0]', ["data.alpha", "-1.0"]),
    (BASE, '"server.strategy+client.algorithm" = [["fedavg"]]', ["server.strategy+client.algorithm",
                                                                 "list of 2"]),
    (BASE, '"server.strategy+client.algorithm" = [["fedavg", "nope"]]', ["client.algorithm", "'nope'"]),
    (BASE, '"run.out_dir" = ["a", "b"]', ["run.out_dir"]),
    (BASE + '\n"run.seed" = 1', '"run.seed" = [0, 1]', ["run.seed", "both"]),
    (BASE, '"run.seed" = [0, 0]', ["run.seed", "twice"]),
    (BASE, '"run.seed" = [0]\n"run.seed+client.algorithm" = [[1, "fixmatch"]]', ["run.seed", "twice"]),
    ('config = "missing.toml"', '"run.seed" = [0]', ["missing.toml", "not found"]),
])
def test_bad_grid_fails_before_running(tmp_path, capsys, base, axes, needles):
    grid = write_grid(tmp_path / "grid.toml", base, axes)
    assert main(["bench", "--grid", str(grid), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    for n in needles:
        assert n in err[0], (n, err[0])
    assert not (tmp_path / "out").exists()


def test_bad_grid_files(tmp_path, capsys):
    out = str(tmp_path / "out")
    assert main(["bench", "--grid", str(tmp_path / "nope.toml"), "--out", out]) == 2
    assert "nope.toml" in capsys.readouterr().err
    (tmp_path / "bad.toml").write_text("[axes\n")
    assert main(["bench", "--grid", str(tmp_path / "bad.toml"), "--out", out]) == 2
    assert "invalid TOML" in capsys.readouterr().err
    (tmp_path / "typo.toml").write_text('[axis]\n"run.seed" = [0]\n')
    assert main(["bench", "--grid", str(tmp_path / "typo.toml"), "--out", out]) == 2
    assert "did you mean [axes]" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_bad_grid_cli_contract(tmp_path):
    """As a user sees it: exit 2, one `error:` line naming file and key, no traceback."""
    grid = write_grid(tmp_path / "g.toml", BASE, '"federation.round" = [1, 2]')
    assert_bad_input(run_cli("bench", "--grid", str(grid), "--out", str(tmp_path / "o")),
                     "g.toml", "federation.round", "did you mean 'federation.rounds'")
    assert_bad_input(run_cli("bench", "--grid", str(grid)), "--out")
    assert_bad_input(run_cli("report", str(tmp_path)), "neither")


def test_grid_cells_ids_zip_and_order(tmp_path):
    (tmp_path / "base.toml").write_text('[data]\ndataset = "synthetic"\nnum_clients = 3\n'
                                        '[client]\nlr = 0.5\n')
    grid = write_grid(tmp_path / "grid.toml", 'config = "base.toml"\n"client.lr" = 0.1', """
"server.strategy+client.algorithm" = [["fedavg", "supervised"], ["fedprox", "fixmatch"]]
"run.seed" = [0, 1]
"data.alpha" = [0.3, 1]
""")
    g = bench.load_grid(grid, tmp_path / "out")
    assert g.keys == ["server.strategy", "client.algorithm", "run.seed", "data.alpha"]
    assert len(g.cells) == 8
    assert g.cells[0].id == "server.strategy=fedavg__client.algorithm=supervised__run.seed=0__data.alpha=0.3"
    assert g.cells[-1].params == {"server.strategy": "fedprox", "client.algorithm": "fixmatch",
                                  "run.seed": 1, "data.alpha": 1.0}
    c = g.cells[-1].cfg
    # defaults < [base] config file < [base] keys < [axes]
    assert (c.data.dataset, c.data.num_clients, c.client.lr, c.data.alpha) == ("synthetic", 3, 0.1, 1.0)
    assert c.run.out_dir == str((tmp_path / "out" / "runs" / g.cells[-1].id).resolve())
    # stable: same grid -> same ids; unique; filesystem-safe
    assert [x.id for x in bench.load_grid(grid, tmp_path / "out").cells] == [x.id for x in g.cells]
    assert len({x.id for x in g.cells}) == 8
    assert all(re.fullmatch(r"[A-Za-z0-9._=+-]+", x.id) for x in g.cells)
    # every configuration once before the next seed
    assert [x.seed for x in g.order()] == [0, 0, 0, 0, 1, 1, 1, 1]


def test_cell_id_sanitised_and_bounded():
    a = bench.cell_id({"data.root": "/a b/c"})
    b = bench.cell_id({"data.root": "/a-b-c"})
    assert a != b and "/" not in a and " " not in a
    long = bench.cell_id({f"client.k{i}": "x" * 30 for i in range(10)})
    assert len(long) <= 150
    assert bench.cell_id({}) == "base"


def test_last_error():
    tb = "Traceback (most recent call last):\n  File x\nValueError: bad thing\n(raylet) noise\n"
    assert bench.last_error(tb, 1) == "ValueError: bad thing"
    assert bench.last_error("error: data.root: missing\n", 2) == "data.root: missing"
    assert bench.last_error("", -signal.SIGSEGV).startswith("killed by SIGSEGV")
    assert bench.last_error("", 3) == "exit status 3"


def test_out_dir_with_other_finished_runs_is_refused(tmp_path, capsys):
    out = fake_bench(tmp_path)
    grid = tmp_path / "grid.toml"
    grid.write_text(grid.read_text().replace('"data.num_clients" = 5', '"data.num_clients" = 6'))
    assert main(["bench", "--grid", str(grid), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "different config" in err and "data.num_clients=5" in err
    run = next((out / "runs").iterdir())
    assert main(["bench", "--grid", str(grid), "--out", str(run)]) == 2
    assert "run directory" in capsys.readouterr().err


def test_dry_run_lists_states(tmp_path, capsys):
    out = fake_bench(tmp_path)
    assert main(["bench", "--grid", str(tmp_path / "grid.toml"), "--out", str(out), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum(ln.startswith("finished") for ln in lines) == 11
    assert sum(ln.startswith("failed") for ln in lines) == 1


# ------------------------------------------------------------- report (hand-made runs)


def test_report_from_files(tmp_path, capsys):
    out = fake_bench(tmp_path)
    assert main(["report", str(out)]) == 0
    res = pd.read_csv(out / "results.csv")
    assert len(res) == 12
    for col in ["cell", "server.strategy", "client.algorithm", "run.seed", "status", "error", "exit_code",
                "acc_all", "acc_seen", "acc_unseen", "acc_local_unseen", "acc_global_unseen", "loss",
                "best_acc_all", "best_round", "wall_s", "cell_s"]:
        assert col in res.columns, col
    assert (res.status == "ok").sum() == 11
    failed = res[res.status == "failed"].iloc[0]
    assert failed.error == "RuntimeError: boom | pipe" and failed.exit_code == 1
    assert res.best_round.dropna().eq(4).all()

    md = (out / "summary.md").read_text()
    table = [ln for ln in md.splitlines() if ln.startswith("| fed")]
    assert len(table) == 4  # one row per (strategy, algorithm), seeds aggregated
    assert "| fedavg | fixmatch | 2/3 |" in md and "| fedprox | fixmatch | 3/3 |" in md
    assert "±" in md
    header = next(ln for ln in md.splitlines() if ln.startswith("| server.strategy"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    # all-class accuracy and the all-sample matching's columns lead; the ORCA protocol's follow, labelled
    assert cols[3:8] == ["acc_all", "acc_unseen_strict", "discovered", "acc_seen", "acc_unseen (ORCA protocol)"]
    for col in ("acc_all", "acc_unseen_strict", "discovered", "acc_unseen (ORCA protocol)",
                "acc_global_unseen (ORCA protocol)", "loss"):
        j = cols.index(col)
        cells = [[c.strip() for c in row.strip("|").split("|")][j] for row in table]
        assert sum(c.startswith("**") for c in cells) >= 1, (col, cells)
        vals = [float(c.strip("*").split(" ± ")[0]) for c in cells]
        best = min(vals) if col == "loss" else max(vals)
        assert all(c.startswith("**") == (v == best) for c, v in zip(cells, vals)), (col, cells)
    assert "boom \\| pipe" in md  # the failed cell is listed, table-safe

    # re-rendering is a pure function of the files
    first = (out / "summary.md").read_bytes(), (out / "results.csv").read_bytes()
    assert main(["report", str(out), "--quiet"]) == 0
    assert ((out / "summary.md").read_bytes(), (out / "results.csv").read_bytes()) == first

    assert check_html_images(out / "report.html") == 5
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert pngs == ["accuracy_bars.png", "accuracy_vs_round.png", "accuracy_vs_wall_time.png",
                    "confusion.png", "per_class_heatmap.png"]
    assert all(p.read_bytes().startswith(PNG) for p in (out / "plots").glob("*.png"))
    text = (out / "report.html").read_text()
    assert "globally-unseen" in text and "fedprox" in text


def test_report_closed_world_hides_unseen_columns(tmp_path):
    out = fake_bench(tmp_path, open_world=False, fail=False)
    report.render(out)
    md = (out / "summary.md").read_text()
    assert "acc_unseen" not in md and "acc_all" in md and "Cells that did not finish" not in md


def test_report_single_run(tmp_path, capsys):
    out = fake_bench(tmp_path)
    run = next(p for p in (out / "runs").iterdir() if (p / "summary.json").exists())
    assert main(["report", str(run)]) == 0
    assert check_html_images(run / "report.html") == 3
    assert (run / "plots" / "curve.png").exists() and (run / "plots" / "per_class.png").exists()
    assert (run / "plots" / "confusion.png").read_bytes().startswith(PNG)
    # a run still in progress (no summary.json): curve and per-class from metrics.csv
    (run / "summary.json").unlink()
    kind, files = report.render(run)
    assert kind == "run" and "per_class" in files


def test_report_neither(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "neither a bench directory" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing")]) == 2
    with pytest.raises(ConfigError):
        report.render(tmp_path)


# ----------------------------------------------------- cells that fail at run time


def test_failing_cells_are_recorded_and_the_grid_goes_on(tmp_path):
    """cinic10 under an empty data.root is a valid config that fails when the run
    loads its data (before Ray starts): every cell is attempted and recorded."""
    empty = tmp_path / "empty"
    empty.mkdir()
    grid = write_grid(tmp_path / "g.toml", f'"data.root" = "{empty}"\n"data.dataset" = "cinic10"',
                      '"client.algorithm" = ["supervised", "fixmatch"]')
    proc = run_cli("bench", "--grid", str(grid), "--out", str(tmp_path / "out"), "--quiet", timeout=300)
    assert proc.returncode == bench.EXIT_FAILED_CELLS, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    res = pd.read_csv(tmp_path / "out" / "results.csv")
    assert list(res.status) == ["failed", "failed"]
    assert res.exit_code.tolist() == [2, 2]
    assert all("cinic10" in e and str(empty) in e for e in res.error)
    assert "2 cell(s) failed" in proc.stderr
    assert check_html_images(tmp_path / "out" / "report.html") == 0  # nothing to plot, still valid
    assert "Cells that did not finish" in (tmp_path / "out" / "summary.md").read_text()


# ------------------------------------------------------- end to end (real tiny grid)

def _find_child(bench_pid: int, log: Path) -> int | None:
    """The process group the bench runs the cell logging to ``log`` in: its warm worker
    (the cell is forked from it) once the cell has started."""
    from tests.test_bench_pool import warm_worker

    return warm_worker(bench_pid) if log.exists() else None


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    """One real grid, driven through an interruption, a resume and a re-run.

    2 configurations (supervised, fixmatch) x 2 seeds on synthetic data, plus a cinic10
    configuration that fails at run time (empty data.root)."""
    tmp = tmp_path_factory.mktemp("e2e")
    empty = tmp / "empty"
    empty.mkdir()
    grid = write_grid(tmp / "grid.toml", TINY_GRID_BASE + f'"data.root" = "{empty}"', """
"data.dataset+client.algorithm" = [["synthetic", "supervised"], ["synthetic", "fixmatch"], ["cinic10", "supervised"]]
"run.seed" = [0, 1]
""")
    out = tmp / "out"
    cmd = [sys.executable, "-m", "fedssl.cli", "bench", "--grid", str(grid), "--out", str(out)]
    g = bench.load_grid(grid, out)
    first, second = g.order()[0], g.order()[1]
    info: dict = {"grid": grid, "out": out, "cells": g.cells, "first": first, "second": second}

    # 1. start; let the first cell finish; Ctrl-C while the second one runs
    with open(tmp / "p1.out", "w") as so, open(tmp / "p1.err", "w") as se:
        # Ctrl-C of a foreground process: SIGINT must not be inherited as ignored, which
        # it is when the suite itself runs as a background job (`... &` in a script).
        p1 = subprocess.Popen(cmd, cwd=ROOT, stdout=so, stderr=se,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            rec = out / "cells" / f"{first.id}.json"
            wait_for(lambda: (report.read_json(rec) or {}).get("status") == "ok", 400, "the first cell")
            child = wait_for(lambda: _find_child(p1.pid, out / "logs" / f"{second.id}.stderr"), 60,
                          "the second cell's process")
            time.sleep(3)
            p1.send_signal(signal.SIGINT)
            info["p1_rc"] = p1.wait(timeout=120)
        finally:
            if p1.poll() is None:
                p1.kill()
    info["p1_err"] = (tmp / "p1.err").read_text()
    info["leftover"] = live_processes(3, child)
    info["second_rec_after_interrupt"] = report.read_json(out / "cells" / f"{second.id}.json")

    # 2. simulate a crash after the last checkpoint of the finished first cell: it must
    #    be resumed from its checkpoint, not retrained
    (g.run_dir(first) / "summary.json").unlink()
    p2 = subprocess.run(cmd + ["--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    info["p2"] = p2
    info["summary_md"] = (out / "summary.md").read_bytes()
    info["results_csv"] = (out / "results.csv").read_bytes()
    info["records_2"] = {c.id: report.read_json(out / "cells" / f"{c.id}.json") for c in g.cells}
    info["mtimes_2"] = {c.id: (g.run_dir(c) / "summary.json").stat().st_mtime_ns
                        for c in g.cells if (g.run_dir(c) / "summary.json").exists()}
    info["logs_2"] = {c.id: (out / "logs" / f"{c.id}.stdout").read_bytes() for c in g.cells}

    # 3. run again: finished cells are skipped, failed ones retried
    info["p3"] = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    info["records_3"] = {c.id: report.read_json(out / "cells" / f"{c.id}.json") for c in g.cells}
    info["mtimes_3"] = {c.id: (g.run_dir(c) / "summary.json").stat().st_mtime_ns
                        for c in g.cells if (g.run_dir(c) / "summary.json").exists()}
    info["logs_3"] = {c.id: (out / "logs" / f"{c.id}.stdout").read_bytes() for c in g.cells}
    info["summary_md_3"] = (out / "summary.md").read_bytes()
    info["results_csv_3"] = (out / "results.csv").read_bytes()
    return info


def test_e2e_interrupt_stops_cleanly(e2e):
    assert e2e["p1_rc"] == bench.EXIT_INTERRUPTED, e2e["p1_err"][-3000:]
    assert "interrupted" in e2e["p1_err"] and "resume with" in e2e["p1_err"]
    assert "Traceback" not in e2e["p1_err"]
    assert e2e["leftover"] == [], "the interrupted cell left processes behind"
    assert e2e["second_rec_after_interrupt"]["status"] == "interrupted"


def test_e2e_results(e2e):
    p2 = e2e["p2"]
    assert p2.returncode == bench.EXIT_FAILED_CELLS, p2.stderr[-3000:]
    res = pd.read_csv(e2e["out"] / "results.csv")
    assert len(res) == 6
    assert set(res.columns) >= {"data.dataset", "client.algorithm", "run.seed", "status", "error", "acc_all",
                                "acc_seen", "loss", "best_acc_all", "best_round", "wall_s"}
    ok = res[res["data.dataset"] == "synthetic"]
    assert list(ok.status) == ["ok"] * 4
    assert ok.acc_all.between(0, 1).all() and ok.best_acc_all.between(0, 1).all()
    assert ok.best_round.isin([1, 2]).all() and (ok.rounds == 2).all()
    bad = res[res["data.dataset"] == "cinic10"]
    assert list(bad.status) == ["failed"] * 2 and (bad.exit_code == 2).all()
    assert bad.error.str.contains("cinic10").all()
    md = e2e["summary_md"].decode()
    assert "| synthetic | supervised | 2/2 |" in md and "| synthetic | fixmatch | 2/2 |" in md
    assert "**" in md and "±" in md
    assert check_html_images(e2e["out"] / "report.html") == 4
    assert len(list((e2e["out"] / "plots").glob("*.png"))) == 4


def test_e2e_resumed_from_checkpoint(e2e):
    rec = e2e["records_2"][e2e["first"].id]
    assert rec["status"] == "ok" and rec["resumed"] is True and rec["attempts"] == 2
    m = pd.read_csv(e2e["out"] / "runs" / e2e["first"].id / "metrics.csv")
    assert list(m["round"]) == [1, 2]
    # the interrupted cell (no checkpoint of a finished round yet, or one) completed
    assert e2e["records_2"][e2e["second"].id]["status"] == "ok"


def test_e2e_rerun_skips_finished_cells(e2e):
    p3 = e2e["p3"]
    assert p3.returncode == bench.EXIT_FAILED_CELLS, p3.stderr[-3000:]
    assert "4 already finished, 2 to run" in " ".join(p3.stderr.split())
    for cid, mtime in e2e["mtimes_2"].items():
        assert e2e["mtimes_3"][cid] == mtime, f"{cid} was re-run"
        assert e2e["records_3"][cid] == e2e["records_2"][cid]
        assert e2e["logs_3"][cid] == e2e["logs_2"][cid]  # no new attempt was started
    # failed cells are retried on the next invocation
    for c in e2e["cells"]:
        if c.params["data.dataset"] == "cinic10":
            assert e2e["records_3"][c.id]["attempts"] == e2e["records_2"][c.id]["attempts"] + 1


def test_e2e_report_reproduces_summary(e2e):
    """`fedssl report` re-renders exactly what the last `fedssl bench` wrote."""
    out = e2e["out"]
    assert e2e["summary_md_3"] == e2e["summary_md"]  # retrying failures changed nothing shown
    proc = run_cli("report", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "summary.md").read_bytes() == e2e["summary_md_3"]
    assert (out / "results.csv").read_bytes() == e2e["results_csv_3"]
    assert check_html_images(out / "report.html") == 4


def test_one_bench_per_directory(tmp_path, capsys):
    import fcntl

    out = fake_bench(tmp_path)
    with open(out / ".lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        f.write("12345")
        f.flush()
        assert main(["bench", "--grid", str(tmp_path / "grid.toml"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "another fedssl bench (pid 12345)" in err


@pytest.mark.parametrize("name, cells", [("closed_world_grid.toml", 75), ("closed_world_small.toml", 12),
                                         ("openworld_grid.toml", 12), ("quickstart.toml", 2)])
def test_example_grids_are_valid(tmp_path, name, cells):
    g = bench.load_grid(ROOT / "examples" / name, tmp_path / "out")
    assert len(g.cells) == cells
    assert all(c.cfg.data.dataset == "fashion-mnist" for c in g.cells)
    if name == "openworld_grid.toml":
        pairs = {(c.cfg.server.strategy, c.cfg.client.algorithm) for c in g.cells}
        assert pairs == {("fedavg", "supervised"), ("fedavg", "fixmatch"), ("fedavg", "orca"),
                         ("fedossl", "fedossl")}
        c = g.cells[0].cfg
        assert (c.data.partition, c.data.seen_classes, c.data.globally_unseen, c.data.num_clients,
                c.data.labeled_ratio) == ("openworld", 6, 1, 5, 0.5)
    if name == "closed_world_grid.toml":
        c = g.cells[0].cfg
        assert (c.data.num_clients, c.data.alpha, c.data.labeled_ratio) == (100, 0.3, 0.01)
        assert {x.cfg.run.seed for x in g.cells} == {0, 1, 2}


def test_gain_over_the_supervised_reference_is_paired_by_seed(tmp_path, capsys):
    """Each SSL configuration is compared with its supervised twin (same other keys),
    seed by seed; the line is in summary.md, report.html and the terminal."""
    out = fake_bench(tmp_path, open_world=False)  # cell 3 (fedavg, fixmatch, seed 0) failed
    assert main(["report", str(out)]) == 0
    res = pd.read_csv(out / "results.csv").set_index(["server.strategy", "client.algorithm", "run.seed"])
    md = (out / "summary.md").read_text()
    lines = [ln for ln in md.splitlines() if ln.startswith("- fixmatch")]
    assert len(lines) == 2
    for strategy, seeds in (("fedavg", [1, 2]), ("fedprox", [0, 1, 2])):
        diffs = [100 * (res.loc[(strategy, "fixmatch", s), "acc_all"] - res.loc[(strategy, "supervised", s), "acc_all"])
                 for s in seeds]
        line = next(ln for ln in lines if f"(server.strategy={strategy})" in ln)
        mean = sum(diffs) / len(diffs)
        assert f"fixmatch vs supervised (server.strategy={strategy}): {mean:+.1f} points of acc_all" in line
        assert f"paired over {len(seeds)} seed(s)" in line
        assert all(f"seed {s}: {d:+.1f}" in line for s, d in zip(seeds, diffs))
    assert "Over the supervised reference" in (out / "report.html").read_text()


def test_no_gain_line_without_a_supervised_twin(tmp_path):
    out = fake_bench(tmp_path, open_world=False, fail=False)
    from fedssl.report.model import load_bench, results_frame
    from fedssl.report.stats import reference_gains

    b = load_bench(out)
    keep = [c for c in b.cells if c.params["client.algorithm"] != "supervised"]
    b.cells[:] = keep
    assert reference_gains(b, results_frame(b)) == []



@pytest.mark.parametrize("path", sorted((ROOT / "benchmarks" / "grids").glob("openworld_robustness*.toml")), ids=lambda p: p.name)
def test_openworld_robustness_grids_are_valid_and_pin_their_fedossl_mode(tmp_path, path):
    """Every robustness grid loads, and names the guard and ramp-up its FedoSSL rows were
    measured with, so a change of defaults cannot change what a documented grid runs."""
    text = path.read_text()
    g = bench.load_grid(path, tmp_path / "out")
    assert g.cells and all(c.cfg.data.partition == "openworld" for c in g.cells)
    if any(c.cfg.client.algorithm == "fedossl" for c in g.cells):
        assert "client.fedossl.pseudo_label_guard" in text and "server.fedossl_rampup" in text
