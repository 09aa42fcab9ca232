"""The state of each cell, read from the bench directory; and the one-bench-per-
directory lock."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fedssl.bench.grid import Grid, GridCell
from fedssl.report.layout import LOCK, record_path
from fedssl.config import Config, ConfigError, resolve
from fedssl.report.model import finished_summary, read_json


def config_diff(run_dir: Path, cfg: Config) -> str | None:
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
    from fedssl.runlog import CHECKPOINT  # the run's own file name (runlog owns it)

    run = grid.run_dir(cell)
    if finished_summary(run) is not None:
        return "finished"
    rec = read_json(record_path(grid.out, cell.id)) or {}
    if (run / CHECKPOINT).exists() and (run / "config.toml").exists() and config_diff(run, cell.cfg) is None:
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
        if finished_summary(run) is None:
            continue
        diff = config_diff(run, cell.cfg)
        if diff:
            raise ConfigError(f"{run} holds a finished run of a different config ({diff}); use "
                              f"another --out or delete that directory")


class exclusive:
    """One ``fedssl bench`` per directory at a time (an advisory lock on DIR/.lock)."""

    def __init__(self, out: Path) -> None:
        self.path = out / LOCK

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
