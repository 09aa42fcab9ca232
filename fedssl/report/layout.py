"""The directory layout of a bench (``fedssl bench --out DIR``): written by
:mod:`fedssl.bench`, read by the report.

``DIR/grid.json`` (cells: id, varied values, seed), ``DIR/grid.toml`` (copy of the grid
file), ``DIR/cells/<id>.toml`` (the cell's resolved config), ``DIR/cells/<id>.json``
(the bench's record: status, exit code, error, seconds), ``DIR/runs/<id>/`` (the run's
own files), ``DIR/logs/<id>.stdout|.stderr`` and ``DIR/logs/worker.log`` (the warm
worker's own messages). The report files next to them
(``results.csv``, ``summary.md``, ``report.html``, ``plots/``) are the report's own
(:mod:`fedssl.report.model`). Cell ids, labels and tables show config values as
:func:`fmt_value` writes them. This module imports nothing of fedssl: the bench imports
the report, never the other way round.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

GRID_JSON = "grid.json"
GRID_TOML = "grid.toml"
LOCK = ".lock"


def runs_dir(bench: Path) -> Path:
    return bench / "runs"


def cells_dir(bench: Path) -> Path:
    return bench / "cells"


def logs_dir(bench: Path) -> Path:
    return bench / "logs"


def record_path(bench: Path, cell_id: str) -> Path:
    """The bench's record of one cell (status, exit code, error, seconds)."""
    return cells_dir(bench) / f"{cell_id}.json"


def cell_config_path(bench: Path, cell_id: str) -> Path:
    return cells_dir(bench) / f"{cell_id}.toml"


def fmt_value(v: Any) -> str:
    """A config value as it appears in cell ids (``runs/<id>``), labels and tables
    (TOML-like booleans, exact floats)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)
