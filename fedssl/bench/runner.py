"""Running a grid: each cell is a ``fedssl run``, by default in a process forked from
the bench's warm worker (:mod:`fedssl.bench.worker`: imports and a Ray cluster kept
across cells; own process group), or with ``fresh=True`` in a fresh child process (own
process group) as ``fedssl run`` itself. Either way a crashing cell -- even a segfault
-- cannot take the grid down: a cell killed by a signal, or a worker that dies, is
recorded as failed and the worker replaced. Ctrl-C (or SIGTERM) stops the running
child's whole process group, keeps what is done, renders the report and prints how
to resume."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fedssl.bench.grid import Grid, GridCell
from fedssl.bench.pool import WarmWorker, WorkerDied, main_thread, terminate_group
from fedssl.report.layout import (
    GRID_JSON,
    GRID_TOML,
    cell_config_path,
    cells_dir,
    fmt_value,
    logs_dir,
    record_path,
    runs_dir,
)
from fedssl.bench.state import cell_state
from fedssl.report.model import (
    SEED_KEY,
    Bench,
    finished_summary,
    load_bench,
    read_json,
    results_frame,
)
from fedssl.report.render import render_bench, write_results
from fedssl.report.stats import reference_gains, summary_cells

EXIT_FAILED_CELLS = 1
EXIT_INTERRUPTED = 130

_ERR_LINE = re.compile(r"^(error: |[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b)")


def last_error(stderr: str, code: int) -> str:
    """The most telling line of a failed child's stderr (plus the signal, if killed)."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    pick = next((ln for ln in reversed(lines) if _ERR_LINE.match(ln)), lines[-1] if lines else "")
    pick = pick.removeprefix("error: ")
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        pick = f"killed by {name}" + (f"; last output: {pick}" if pick else "")
    return pick[:500] or f"exit status {code}"


def _rounds_done(metrics: Path) -> int:
    try:
        with metrics.open("rb") as f:
            f.seek(max(0, metrics.stat().st_size - 4096))
            last = f.read().decode(errors="replace").strip().splitlines()[-1]
        return int(last.split(",", 1)[0])
    except (OSError, ValueError, IndexError):
        return 0


def _fmt_s(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(max(0, s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class BenchRunner:
    def __init__(self, grid: Grid, quiet: bool = False, skip_failed: bool = False, fresh: bool = False) -> None:
        from rich.console import Console

        self.grid, self.quiet, self.skip_failed, self.fresh = grid, quiet, skip_failed, fresh
        self.out = grid.out
        self.console = Console(stderr=True)
        self.durations: list[float] = []
        self.worker: WarmWorker | None = None

    # -- files -------------------------------------------------------------------
    def prepare(self) -> None:
        from fedssl.runlog import write_atomic, write_json

        for d in (runs_dir(self.out), cells_dir(self.out), logs_dir(self.out)):
            d.mkdir(parents=True, exist_ok=True)
        write_atomic(self.out / GRID_TOML, self.grid.path.read_text())
        write_json(self.out / GRID_JSON, {
            "grid_file": str(self.grid.path.resolve()),
            "config_file": str(self.grid.config_file.resolve()) if self.grid.config_file else None,
            "base": self.grid.base,
            "keys": self.grid.keys,
            "cells": [{"id": c.id, "params": c.params, "seed": c.seed} for c in self.grid.cells],
        })

    def _record_path(self, cell: GridCell) -> Path:
        return record_path(self.out, cell.id)

    def _write_record(self, cell: GridCell, **rec: Any) -> dict[str, Any]:
        from fedssl.runlog import write_json

        old = read_json(self._record_path(cell)) or {}
        new = {"id": cell.id, "params": cell.params, **rec}
        new["attempts"] = int(old.get("attempts", 0)) + 1
        new["cell_s"] = round(float(old.get("cell_s") or 0.0) + rec.get("cell_s", 0.0), 3)
        write_json(self._record_path(cell), new)
        return new

    # -- one cell ----------------------------------------------------------------
    def run_cell(self, cell: GridCell, on_poll=None) -> dict[str, Any]:
        run_dir = self.grid.run_dir(cell)
        resume = cell_state(self.grid, cell) == "resumable"
        if not resume and run_dir.exists():
            shutil.rmtree(run_dir)
        cfg_file = cell_config_path(self.out, cell.id)
        from fedssl.runlog import write_atomic

        write_atomic(cfg_file, cell.cfg.to_toml())
        argv = ["--quiet"]  # fedssl run's arguments
        argv += ["--resume", str(run_dir)] if resume else ["--config", str(cfg_file), "--out", str(run_dir)]
        logs = logs_dir(self.out)
        t0 = time.monotonic()

        def poll() -> None:
            if on_poll:
                on_poll(_rounds_done(run_dir / "metrics.csv"), time.monotonic() - t0)

        how = "" if self.fresh else " (in the bench's warm worker)"
        with open(logs / f"{cell.id}.stdout", "ab") as out, open(logs / f"{cell.id}.stderr", "ab") as err:
            header = (f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {'resume' if resume else 'start'}: "
                      f"{sys.executable} -m fedssl.run_command {' '.join(argv)}{how}\n")
            out.write(header.encode()), err.write(header.encode())
            out.flush(), err.flush()
            err_from = err.tell()
            try:
                code = self._fresh(argv, out, err, poll) if self.fresh else self._warm(cell, argv, logs, poll)
            except BaseException:
                self._write_record(cell, status="interrupted", exit_code=None,
                                   error="interrupted by the user", cell_s=time.monotonic() - t0,
                                   resumed=resume)
                raise
        elapsed = time.monotonic() - t0
        summary = finished_summary(run_dir)
        if summary is not None:
            rec = self._write_record(cell, status=summary["status"], exit_code=code, error="",
                                     cell_s=elapsed, resumed=resume)
            self.durations.append(rec["cell_s"])
            return rec
        with open(logs / f"{cell.id}.stderr", "rb") as f:
            f.seek(err_from)
            text = f.read().decode(errors="replace")
        return self._write_record(cell, status="failed", exit_code=code, error=last_error(text, code),
                                  cell_s=elapsed, resumed=resume)

    def _fresh(self, argv: list[str], out: Any, err: Any, poll) -> int:
        """``fedssl run ARGV`` in a fresh child process (own process group)."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen([sys.executable, "-m", "fedssl.run_command", *argv], stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        try:
            while True:
                try:
                    return proc.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    poll()
        except BaseException:
            terminate_group(proc)
            raise

    def _warm(self, cell: GridCell, argv: list[str], logs: Path, poll) -> int:
        """``fedssl run ARGV`` forked from the warm worker; a new worker after a cell
        killed by a signal, or when the worker itself died."""
        from fedssl.local_ray import local_ray_resources

        if self.worker is None:
            self.worker = WarmWorker(logs / "worker.log", {**os.environ, "PYTHONUNBUFFERED": "1"})
        ray = None if cell.cfg.federation.ray_address else local_ray_resources(cell.cfg)
        try:
            code = self.worker.run(argv, logs / f"{cell.id}.stdout", logs / f"{cell.id}.stderr", ray, poll,
                                   data=(cell.cfg.data.dataset, cell.cfg.data.root))
        except WorkerDied as e:
            self.worker = None
            return e.code
        except BaseException:
            self.close()
            raise
        if code < 0:  # whatever the dead cell left in the worker's cluster goes with it
            self.close(kill=True)
        return code

    def close(self, kill: bool = True) -> None:
        """Stop the warm worker, if any (kill: now, its whole process group)."""
        worker, self.worker = self.worker, None
        if worker is not None:
            worker.kill() if kill else worker.stop()

    # -- the grid ----------------------------------------------------------------
    def _announce(self, todo: list[GridCell], states: dict[str, str]) -> int:
        """Print what is to do; returns the number of cells already finished."""
        grid = self.grid
        done0 = len(grid.cells) - len(todo)
        for c in grid.cells:  # earlier invocations' timings feed the ETA
            rec = read_json(self._record_path(c)) or {}
            if states[c.id] == "finished" and rec.get("cell_s"):
                self.durations.append(float(rec["cell_s"]))
        if not self.quiet:
            n_res = sum(states[c.id] == "resumable" for c in todo)
            self.console.print(f"[bold]fedssl bench[/] {grid.path}: {len(grid.cells)} cells, {done0} already "
                               f"finished, {len(todo)} to run" + (f" ({n_res} resume from a checkpoint)" if n_res else "")
                               + f" -> {self.out}", highlight=False, soft_wrap=True)
        return done0

    def _say_done(self, progress: Any, cell: GridCell, rec: dict[str, Any]) -> None:
        from rich.markup import escape

        if rec["status"] == "failed":
            self.console.print(f"[red]✗ {escape(cell.id)}: failed (exit {rec['exit_code']}): "
                               f"{escape(rec['error'])}[/]", highlight=False, soft_wrap=True)
        elif not self.quiet:
            acc = (finished_summary(self.grid.run_dir(cell)) or {}).get("final", {}).get("acc_all")
            acc_s = f"acc_all {acc:.4f}" if isinstance(acc, (int, float)) else ""
            progress.console.print(f"[green]✓[/] {escape(cell.id)}: {rec['status']} {acc_s} "
                                   f"({rec['cell_s']:.0f} s)", highlight=False, soft_wrap=True)

    def _run_todo(self, todo: list[GridCell], done0: int) -> None:
        from rich.markup import escape
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        progress = Progress(TextColumn("{task.description}"), MofNCompleteColumn(), BarColumn(),
                            TimeElapsedColumn(), TextColumn("{task.fields[eta]}"),
                            console=self.console, disable=self.quiet, transient=False)
        with progress:
            total = progress.add_task("[bold]cells", total=len(self.grid.cells), completed=done0, eta="")
            current = progress.add_task("", total=1, visible=False, eta="")
            for i, cell in enumerate(todo):
                rounds, left_after = cell.cfg.federation.rounds, len(todo) - i - 1
                label = " · ".join(fmt_value(v) for v in cell.params.values()) or cell.id
                progress.reset(current, total=rounds, completed=0, visible=True,
                               description=f"  {escape(label)} [dim](rounds)[/]", eta="")

                def poll(done_rounds: int, running: float, _left=left_after, _r=rounds) -> None:
                    progress.update(current, completed=min(done_rounds, _r))
                    progress.update(total, eta=f"ETA {_fmt_s(self._eta(running, done_rounds, _r, _left))}")

                poll(0, 0.0)
                rec = self.run_cell(cell, poll)
                progress.advance(total)
                write_results(load_bench(self.out))  # tables stay current
                self._say_done(progress, cell, rec)
            progress.update(current, visible=False)
            progress.update(total, eta="")

    def run(self) -> int:
        """Every cell not finished yet (failed ones too unless ``skip_failed``), then the report."""
        grid = self.grid
        states = {c.id: cell_state(grid, c) for c in grid.cells}
        todo = [c for c in grid.order() if states[c.id] != "finished"
                and not (self.skip_failed and states[c.id] == "failed")]
        done0 = self._announce(todo, states)
        interrupted = False
        old_term = signal.signal(signal.SIGTERM, _raise_interrupt) if main_thread() else None
        try:
            self._run_todo(todo, done0)
            self.close(kill=False)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            self.close()
            if old_term is not None:
                signal.signal(signal.SIGTERM, old_term)
        return self._finish(interrupted=interrupted)

    def _eta(self, running: float, done_rounds: int, rounds: int, left_after: int) -> float | None:
        if self.durations:
            per = sum(self.durations) / len(self.durations)
        elif done_rounds > 0:
            per = running / done_rounds * rounds
        else:
            return None
        return max(0.0, per - running) + per * left_after

    def _finish(self, interrupted: bool) -> int:
        from rich.markup import escape

        files = render_bench(self.out)
        states = {c.id: cell_state(self.grid, c) for c in self.grid.cells}
        n_done = sum(s == "finished" for s in states.values())
        n_failed = sum(s == "failed" for s in states.values())
        bench = load_bench(self.out)
        self.console.print(summary_table(bench))
        for line in reference_gains(bench, results_frame(bench)):
            self.console.print(f"[bold]{line}[/]", highlight=False, soft_wrap=True)
        self.console.print(f"{n_done}/{len(self.grid.cells)} cells finished; files: {files['results']}, "
                           f"{files['summary']}, {files['report']}"
                           + (f"; learning curves: {files['accuracy_vs_round']}"
                              if "accuracy_vs_round" in files else ""), highlight=False, soft_wrap=True)
        again = f"fedssl bench --grid {self.grid.path} --out {self.out}"
        if interrupted:
            self.console.print(f"[yellow]interrupted: {n_done} of {len(self.grid.cells)} cells are done "
                               f"and kept; resume with: {escape(again)}[/]", highlight=False, soft_wrap=True)
            return EXIT_INTERRUPTED
        if n_failed:
            self.console.print(f"[red]{n_failed} cell(s) failed (errors in {escape(str(files['results']))}, "
                               f"logs in {escape(str(logs_dir(self.out)))}); fix and run again "
                               f"(without --skip-failed) to retry them: {escape(again)}[/]",
                               highlight=False, soft_wrap=True)
            return EXIT_FAILED_CELLS
        return 0


def summary_table(b: Bench):
    """The headline columns of summary.md for the terminal (the file has them all)."""
    from rich.table import Table

    cols, rows = summary_cells(b, results_frame(b))
    # open world: all-class accuracy and the all-sample matching's unseen columns lead
    shown = [c for c in ("acc_all", "acc_unseen_strict", "discovered", "loss", "wall_s") if c in cols]
    if "acc_unseen_strict" in shown:  # keep it readable in 80 columns
        shown.remove("loss")
    table = Table(title=f"mean ± std over {SEED_KEY} (accuracy in %; all columns in summary.md)",
                  title_justify="left")
    for k in b.group_keys or ["configuration"]:
        table.add_column(k.rsplit(".", 1)[-1])
    table.add_column("n", justify="right")
    for c in shown:
        table.add_column(c, justify="right")
    for head, vals in rows:
        by_col = dict(zip(cols, vals))
        table.add_row(*head, *[f"[bold]{by_col[c][0]}[/]" if by_col[c][1] else by_col[c][0] for c in shown])
    return table


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
