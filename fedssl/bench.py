"""``fedssl bench --grid FILE.toml --out DIR``: a resumable grid of experiments.

Grid file
---------
::

    [base]                              # fixed for every cell (dotted config keys)
    config = "base.toml"                # optional; relative to the grid file
    "data.dataset" = "fashion-mnist"

    [axes]                              # the grid is the Cartesian product of these lists
    "server.strategy" = ["fedavg", "fedprox"]
    "client.algorithm" = ["supervised", "fixmatch"]
    "run.seed" = [0, 1, 2]
    # keys joined with "+" vary together (zipped, not crossed): each value is a list
    "server.strategy+client.algorithm" = [["fedavg", "fixmatch"], ["fedossl", "fedossl"]]

Precedence per cell: defaults < ``[base] config`` file < ``[base]`` keys < ``[axes]``.
``run.out_dir`` is owned by the bench. The whole grid (unknown keys, value types, every
cell's cross-field validation, clashes with finished runs already in DIR) is validated
before anything runs; a bad grid exits 2 with one ``error:`` line.

Directory layout
----------------
``DIR/grid.json`` (cells: id, varied values, seed), ``DIR/grid.toml`` (copy of the grid
file), ``DIR/cells/<id>.toml`` (the cell's resolved config), ``DIR/cells/<id>.json``
(the bench's record: status, exit code, error, seconds), ``DIR/runs/<id>/`` (the run's
own files), ``DIR/logs/<id>.stdout|.stderr``, and the report (``results.csv``,
``summary.md``, ``report.html``, ``plots/``; see :mod:`fedssl.report`). The tables are
rewritten after every cell, the plots and HTML at the end; ``fedssl report DIR``
re-renders all of it from the files at any time.

Resumability
------------
Each cell is a ``fedssl run`` in a fresh child process (own process group), so a
crashing cell -- even a segfault -- cannot take the grid down and every cell starts with
clean Ray state. A cell is *finished* iff ``runs/<id>/summary.json`` exists with status
``ok`` or ``diverged``; finished cells are skipped when the command is run again. An
interrupted cell continues with ``fedssl run --resume`` when its run left a checkpoint
of the same config, otherwise it starts over. Failed cells are retried on the next
invocation unless ``--skip-failed``. Ctrl-C (or SIGTERM) stops the running child's whole
process group, keeps what is done, renders the report and prints how to resume.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedssl import report
from fedssl.config import Config, ConfigError, coerce, flatten, read_toml, resolve, unknown_key
from fedssl.config import keys as config_keys

EXIT_FAILED_CELLS = 1
EXIT_INTERRUPTED = 130
_MAX_ID = 150


# ------------------------------------------------------------------------------ grid


@dataclass(frozen=True)
class GridCell:
    id: str
    params: dict[str, Any]  # varied key -> value
    cfg: Config

    @property
    def seed(self) -> int:
        return self.cfg.run.seed


@dataclass
class Grid:
    path: Path
    out: Path
    config_file: Path | None
    base: dict[str, Any]
    keys: list[str]  # varied keys, in grid order (zipped keys expanded)
    cells: list[GridCell] = field(default_factory=list)

    def run_dir(self, cell: GridCell) -> Path:
        return report.runs_dir(self.out) / cell.id

    def order(self) -> list[GridCell]:
        """Execution order: every configuration once per seed before the next seed,
        so an interrupted grid already covers every configuration."""
        seeds = list(dict.fromkeys(c.seed for c in self.cells))
        return sorted(self.cells, key=lambda c: seeds.index(c.seed))


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def cell_id(params: dict[str, Any]) -> str:
    """Readable, stable, filesystem-safe: ``server.strategy=fedavg__run.seed=0``."""
    text = "__".join(f"{k}={_fmt(v)}" for k, v in params.items()) or "base"
    safe = re.sub(r"[^A-Za-z0-9._=+-]+", "-", text)
    if len(safe) > _MAX_ID or safe != text:
        digest = hashlib.sha1(text.encode()).hexdigest()[:8]
        safe = f"{safe[:_MAX_ID - 9]}-{digest}" if len(safe) > _MAX_ID else f"{safe}-{digest}"
    return safe


def load_grid(path: str | Path, out: str | Path) -> Grid:
    """Parse and validate the grid file; ConfigError naming the file, key and value."""
    path, out = Path(path), Path(out).resolve()
    raw = read_toml(path)
    for table in raw:
        if table not in ("base", "axes"):
            import difflib

            close = difflib.get_close_matches(table, ["base", "axes"], n=1)
            hint = f" (did you mean [{close[0]}]?)" if close else ""
            raise ConfigError(f"{path}: unknown table or key {table!r}; a grid file has [base] and "
                              f"[axes]{hint}")
    for table in ("base", "axes"):
        if not isinstance(raw.get(table, {}), dict):
            raise ConfigError(f"{path}: {table} must be a table ([{table}])")
    types = {k: spec.type for k, spec in config_keys().items()}

    def check_key(key: str, where: str) -> type:
        if key not in types:
            raise ConfigError(f"{path} {where}: {unknown_key(key)}")
        if key == "run.out_dir":
            raise ConfigError(f"{path} {where}: run.out_dir is set by fedssl bench (each cell runs in "
                              f"DIR/runs/<cell>); remove it")
        return types[key]

    base = flatten(raw.get("base", {}))
    config_file = None
    if "config" in base:
        ref = base.pop("config")
        if not isinstance(ref, str) or not ref:
            raise ConfigError(f"{path} [base]: config must be a file name, got {ref!r}")
        config_file = (path.parent / ref) if not Path(ref).is_absolute() else Path(ref)
        if not config_file.is_file():
            raise ConfigError(f"{path} [base]: config = {ref!r}: file not found ({config_file})")
    base = {k: coerce(k, v, check_key(k, "[base]"), f"{path} [base]") for k, v in base.items()}

    axes: list[tuple[list[str], list[tuple[Any, ...]]]] = []
    keys: list[str] = []
    for spec, values in _axis_items(raw.get("axes", {})):
        names = [k.strip() for k in spec.split("+")]
        where = f"[axes] {spec!r}"
        for k in names:
            check_key(k, "[axes]")
            if k in keys or names.count(k) > 1:
                raise ConfigError(f"{path} [axes]: {k!r} is varied twice")
            if k in base:
                raise ConfigError(f"{path}: {k!r} is both in [base] and [axes]; keep one")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path} {where}: expected a non-empty list of values, got {values!r}")
        rows = []
        for v in values:
            if len(names) > 1:
                if not isinstance(v, list) or len(v) != len(names):
                    raise ConfigError(f"{path} {where}: each value must be a list of {len(names)} "
                                      f"values ({' + '.join(names)}), got {v!r}")
                items = v
            else:
                items = [v]
            row = tuple(coerce(k, x, types[k], f"{path} {where}") for k, x in zip(names, items))
            if row in rows:
                raise ConfigError(f"{path} {where}: value {v!r} is listed twice")
            rows.append(row)
        axes.append((names, rows))
        keys += names

    grid = Grid(path, out, config_file, base, keys)
    ids: dict[str, dict[str, Any]] = {}
    for combo in itertools.product(*[rows for _, rows in axes]):
        params: dict[str, Any] = {}
        for (names, _), row in zip(axes, combo):
            params.update(zip(names, row))
        cid = cell_id(params)
        if cid in ids:  # two values that differ only in unsafe characters
            raise ConfigError(f"{path}: cells {ids[cid]} and {params} map to the same directory {cid!r}")
        ids[cid] = params
        overrides = {**base, **params, "run.out_dir": str(report.runs_dir(out) / cid)}
        try:
            cfg = resolve(str(config_file) if config_file else None, overrides)
        except ConfigError as e:
            raise ConfigError(f"{path}: cell {cid}: {e}") from None
        grid.cells.append(GridCell(cid, params, cfg))
    return grid


def _axis_items(axes: dict[str, Any]) -> list[tuple[str, Any]]:
    """``[axes]`` entries; unquoted dotted keys (nested tables) are flattened."""
    out: list[tuple[str, Any]] = []
    for k, v in axes.items():
        if isinstance(v, dict):
            out += [(f"{k}.{kk}", vv) for kk, vv in _axis_items(v)]
        else:
            out.append((k, v))
    return out


# ---------------------------------------------------------------------- cell states


def _config_diff(run_dir: Path, cfg: Config) -> str | None:
    """None when ``run_dir/config.toml`` is ``cfg`` (out_dir aside), else the first difference."""
    try:
        there = resolve(str(run_dir / "config.toml")).to_flat()
    except ConfigError as e:
        return f"its config.toml is unreadable ({e})"
    want = cfg.to_flat()
    for k in want:
        if k != "run.out_dir" and there.get(k) != want[k]:
            return f"{k}={there.get(k)!r} there, {want[k]!r} in the grid"
    return None


def cell_state(grid: Grid, cell: GridCell) -> str:
    """finished | failed | interrupted | resumable | pending."""
    run = grid.run_dir(cell)
    if report.finished_summary(run) is not None:
        return "finished"
    rec = report.read_json(report.cells_dir(grid.out) / f"{cell.id}.json") or {}
    if (run / "checkpoint.pt").exists() and (run / "config.toml").exists() and _config_diff(run, cell.cfg) is None:
        return "resumable"
    return rec.get("status") if rec.get("status") in ("failed", "interrupted") else "pending"


def check_out_dir(grid: Grid) -> None:
    """Refuse a DIR that is a run directory, or whose finished runs belong to other configs."""
    out = grid.out
    if (out / "metrics.csv").exists() or (out / "summary.json").exists():
        raise ConfigError(f"--out {out}: that is a run directory, not a bench directory")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: not a directory")
    for cell in grid.cells:
        run = grid.run_dir(cell)
        if report.finished_summary(run) is None:
            continue
        diff = _config_diff(run, cell.cfg)
        if diff:
            raise ConfigError(f"{run} holds a finished run of a different config ({diff}); use "
                              f"another --out or delete that directory")


# --------------------------------------------------------------------------- running

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


def _terminate(proc: subprocess.Popen) -> None:
    """Stop the child and everything it started (its own process group)."""
    old = signal.signal(signal.SIGINT, signal.SIG_IGN) if _main_thread() else None
    try:
        for sig, wait in ((signal.SIGINT, 8.0), (signal.SIGTERM, 4.0), (signal.SIGKILL, 4.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        try:  # stragglers of the group (Ray workers ...)
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


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
    def __init__(self, grid: Grid, quiet: bool = False, skip_failed: bool = False) -> None:
        from rich.console import Console

        self.grid, self.quiet, self.skip_failed = grid, quiet, skip_failed
        self.out = grid.out
        self.console = Console(stderr=True)
        self.durations: list[float] = []

    # -- files -------------------------------------------------------------------
    def prepare(self) -> None:
        from fedssl.runlog import write_atomic, write_json

        for d in (report.runs_dir(self.out), report.cells_dir(self.out), report.logs_dir(self.out)):
            d.mkdir(parents=True, exist_ok=True)
        write_atomic(self.out / "grid.toml", self.grid.path.read_text())
        write_json(self.out / report.GRID_JSON, {
            "grid_file": str(self.grid.path.resolve()),
            "config_file": str(self.grid.config_file.resolve()) if self.grid.config_file else None,
            "base": self.grid.base,
            "keys": self.grid.keys,
            "cells": [{"id": c.id, "params": c.params, "seed": c.seed} for c in self.grid.cells],
        })

    def _record_path(self, cell: GridCell) -> Path:
        return report.cells_dir(self.out) / f"{cell.id}.json"

    def _write_record(self, cell: GridCell, **rec: Any) -> dict[str, Any]:
        from fedssl.runlog import write_json

        old = report.read_json(self._record_path(cell)) or {}
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
        cfg_file = report.cells_dir(self.out) / f"{cell.id}.toml"
        from fedssl.runlog import write_atomic

        write_atomic(cfg_file, cell.cfg.to_toml())
        cmd = [sys.executable, "-m", "fedssl.cli", "run", "--quiet"]
        cmd += ["--resume", str(run_dir)] if resume else ["--config", str(cfg_file), "--out", str(run_dir)]
        logs = report.logs_dir(self.out)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        t0 = time.monotonic()
        with open(logs / f"{cell.id}.stdout", "ab") as out, open(logs / f"{cell.id}.stderr", "ab") as err:
            header = f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {'resume' if resume else 'start'}: {' '.join(cmd)}\n"
            out.write(header.encode()), err.write(header.encode())
            out.flush(), err.flush()
            err_from = err.tell()
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env,
                                    start_new_session=True)
            try:
                while True:
                    try:
                        code = proc.wait(timeout=0.5)
                        break
                    except subprocess.TimeoutExpired:
                        if on_poll:
                            on_poll(_rounds_done(run_dir / "metrics.csv"), time.monotonic() - t0)
            except BaseException:
                _terminate(proc)
                self._write_record(cell, status="interrupted", exit_code=None,
                                   error="interrupted by the user", cell_s=time.monotonic() - t0,
                                   resumed=resume)
                raise
        elapsed = time.monotonic() - t0
        summary = report.finished_summary(run_dir)
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

    # -- the grid ----------------------------------------------------------------
    def run(self) -> int:
        from rich.markup import escape
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        grid = self.grid
        states = {c.id: cell_state(grid, c) for c in grid.cells}
        todo = [c for c in grid.order() if states[c.id] != "finished"
                and not (self.skip_failed and states[c.id] == "failed")]
        done0 = len(grid.cells) - len(todo)
        for c in grid.cells:  # earlier invocations' timings feed the ETA
            rec = report.read_json(self._record_path(c)) or {}
            if states[c.id] == "finished" and rec.get("cell_s"):
                self.durations.append(float(rec["cell_s"]))
        if not self.quiet:
            n_res = sum(states[c.id] == "resumable" for c in todo)
            self.console.print(f"[bold]fedssl bench[/] {grid.path}: {len(grid.cells)} cells, {done0} already "
                               f"finished, {len(todo)} to run" + (f" ({n_res} resume from a checkpoint)" if n_res else "")
                               + f" -> {self.out}", highlight=False, soft_wrap=True)
        progress = Progress(TextColumn("{task.description}"), MofNCompleteColumn(), BarColumn(),
                            TimeElapsedColumn(), TextColumn("{task.fields[eta]}"),
                            console=self.console, disable=self.quiet, transient=False)
        interrupted = failed_now = 0
        old_term = None
        if _main_thread():
            old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            with progress:
                total = progress.add_task("[bold]cells", total=len(grid.cells), completed=done0, eta="")
                current = progress.add_task("", total=1, visible=False, eta="")
                for i, cell in enumerate(todo):
                    left_after = len(todo) - i - 1
                    rounds = cell.cfg.federation.rounds
                    label = " · ".join(_fmt(v) for v in cell.params.values()) or cell.id
                    progress.reset(current, total=rounds, completed=0, visible=True,
                                   description=f"  {escape(label)} [dim](rounds)[/]", eta="")

                    def poll(done_rounds: int, running: float, _left=left_after, _r=rounds) -> None:
                        progress.update(current, completed=min(done_rounds, _r))
                        progress.update(total, eta=f"ETA {_fmt_s(self._eta(running, done_rounds, _r, _left))}")

                    poll(0, 0.0)
                    rec = self.run_cell(cell, poll)
                    progress.advance(total)
                    report.write_results(report.load_bench(self.out))  # tables stay current
                    if rec["status"] == "failed":
                        failed_now += 1
                        self.console.print(f"[red]✗ {escape(cell.id)}: failed (exit {rec['exit_code']}): "
                                           f"{escape(rec['error'])}[/]", highlight=False, soft_wrap=True)
                    elif not self.quiet:
                        acc = (report.finished_summary(grid.run_dir(cell)) or {}).get("final", {}).get("acc_all")
                        acc_s = f"acc_all {acc:.4f}" if isinstance(acc, (int, float)) else ""
                        progress.console.print(f"[green]✓[/] {escape(cell.id)}: {rec['status']} {acc_s} "
                                               f"({rec['cell_s']:.0f} s)", highlight=False, soft_wrap=True)
                progress.update(current, visible=False)
                progress.update(total, eta="")
        except KeyboardInterrupt:
            interrupted = 1
        finally:
            if old_term is not None:
                signal.signal(signal.SIGTERM, old_term)
        return self._finish(interrupted=bool(interrupted))

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

        files = report.render_bench(self.out)
        states = {c.id: cell_state(self.grid, c) for c in self.grid.cells}
        n_done = sum(s == "finished" for s in states.values())
        n_failed = sum(s == "failed" for s in states.values())
        self.console.print(summary_table(report.load_bench(self.out)))
        self.console.print(f"{n_done}/{len(self.grid.cells)} cells finished; files: {files['results']}, "
                           f"{files['summary']}, {files['report']}", highlight=False, soft_wrap=True)
        again = f"fedssl bench --grid {self.grid.path} --out {self.out}"
        if interrupted:
            self.console.print(f"[yellow]interrupted: {n_done} of {len(self.grid.cells)} cells are done "
                               f"and kept; resume with: {escape(again)}[/]", highlight=False, soft_wrap=True)
            return EXIT_INTERRUPTED
        if n_failed:
            self.console.print(f"[red]{n_failed} cell(s) failed (errors in {escape(str(files['results']))}, "
                               f"logs in {escape(str(report.logs_dir(self.out)))}); fix and run again "
                               f"(without --skip-failed) to retry them: {escape(again)}[/]",
                               highlight=False, soft_wrap=True)
            return EXIT_FAILED_CELLS
        return 0


def summary_table(b: report.Bench):
    """The headline columns of summary.md for the terminal (the file has them all)."""
    from rich.table import Table

    results = report.results_frame(b)
    groups, cols, stats = report.summary_stats(b, results)
    shown = [c for c in ("acc_all", "acc_unseen", "acc_global_unseen", "loss", "wall_s") if c in cols]
    if "acc_unseen" in shown:  # keep it readable in 80 columns
        shown.remove("loss")
    best = {c: report._best(groups, c, stats) for c in shown}
    table = Table(title=f"mean ± std over {report.SEED_KEY} (accuracy in %; all columns in summary.md)",
                  title_justify="left")
    for k in b.group_keys or ["configuration"]:
        table.add_column(k.rsplit(".", 1)[-1])
    table.add_column("n", justify="right")
    for c in shown:
        table.add_column(c, justify="right")
    for g in groups:
        row = [report._fmt_value(g.params[k]) for k in b.group_keys] or ["all"]
        row.append(f"{len(g.done)}/{len(g.cells)}")
        for c in shown:
            mean, std, _ = stats[g.label, c]
            text = report._fmt_stat(c, mean, std)
            row.append(f"[bold]{text}[/]" if report._is_best(c, mean, best[c]) else text)
        table.add_row(*row)
    return table


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


# ------------------------------------------------------------------------------- CLI


def cmd_bench(args: argparse.Namespace) -> int:
    grid = load_grid(args.grid, args.out)
    check_out_dir(grid)
    if args.dry_run:
        for c in grid.order():
            print(f"{cell_state(grid, c):11s} {c.id}")
        print(f"{len(grid.cells)} cells; run directories under {report.runs_dir(grid.out)}")
        return 0
    grid.out.mkdir(parents=True, exist_ok=True)
    with _exclusive(grid.out):
        runner = BenchRunner(grid, quiet=args.quiet, skip_failed=args.skip_failed)
        runner.prepare()
        return runner.run()


class _exclusive:
    """One ``fedssl bench`` per directory at a time (an advisory lock on DIR/.lock)."""

    def __init__(self, out: Path) -> None:
        self.path = out / ".lock"

    def __enter__(self) -> None:
        import fcntl

        self.f = open(self.path, "a+")
        try:
            fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.f.seek(0)
            holder = self.f.read().strip() or "?"
            self.f.close()
            raise ConfigError(f"--out {self.path.parent}: another fedssl bench (pid {holder}) is running "
                              "there; wait for it or stop it first") from None
        self.f.truncate(0)
        self.f.write(str(os.getpid()))
        self.f.flush()

    def __exit__(self, *exc: Any) -> None:
        self.f.close()


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("bench", help="run a grid of experiments (resumable)",
                              description="Run every cell of a grid (the Cartesian product of the "
                                          "grid file's [axes]) as its own `fedssl run`, skipping "
                                          "cells already finished in DIR; then write results.csv, "
                                          "summary.md and report.html.")
    p.add_argument("--grid", required=True, metavar="FILE.toml", help="grid file ([base] and [axes])")
    p.add_argument("--out", required=True, metavar="DIR", help="bench directory (created or resumed)")
    p.add_argument("--quiet", action="store_true", help="no progress bar; failures and the final table only")
    p.add_argument("--skip-failed", action="store_true",
                   help="do not retry cells that failed in an earlier invocation")
    p.add_argument("--dry-run", action="store_true", help="validate the grid, list the cells and their state")
    p.set_defaults(func=cmd_bench)
