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
Described in :mod:`fedssl.report.layout`: ``DIR/grid.json`` (cells: id, varied values, seed),
``DIR/grid.toml`` (copy of the grid file), ``DIR/cells/<id>.toml`` (the cell's resolved
config), ``DIR/cells/<id>.json`` (the bench's record: status, exit code, error, seconds),
``DIR/runs/<id>/`` (the run's own files), ``DIR/logs/<id>.stdout|.stderr``, and the report (``results.csv``,
``summary.md``, ``report.html``, ``plots/``; see :mod:`fedssl.report`). The tables are
rewritten after every cell, the plots and HTML at the end; ``fedssl report DIR``
re-renders all of it from the files at any time.

Resumability
------------
Each cell is a ``fedssl run`` in its own process, forked from the bench's warm worker
(:mod:`~fedssl.bench.worker`, own process group): the imports and a local Ray cluster
are paid once per grid, not once per cell, and every cell still starts from the same
pristine process state (results identical to the cell run alone). A crashing cell --
even a segfault -- cannot take the grid down: a cell killed by a signal, or a worker
that dies, is recorded as failed and the worker is replaced. ``--fresh-process`` runs
each cell as a fresh ``fedssl run`` child instead (slower; for debugging). The worker
writes its own messages to ``logs/worker.log``. A cell is *finished* iff
``runs/<id>/summary.json`` exists with status ``ok``, ``diverged`` or ``no_client_update``; finished cells are skipped when the command is run again. An
interrupted cell continues with ``fedssl run --resume`` when its run left a checkpoint
of the same config, otherwise it starts over. Failed cells are retried on the next
invocation unless ``--skip-failed``. Ctrl-C (or SIGTERM) stops the running child's whole
process group (the worker's, with its Ray cluster), keeps what is done, renders the
report and prints how to resume.

Modules: :mod:`~fedssl.bench.grid` (the grid file, pure),
:mod:`~fedssl.bench.state` (cell states, the directory lock), :mod:`~fedssl.bench.runner`
(cells, progress, report), :mod:`~fedssl.bench.pool` and :mod:`~fedssl.bench.worker`
(the warm worker, both sides) and :mod:`~fedssl.bench.cli`.
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Public names, imported on first use: importing this package (``fedssl.bench`` is the
# API's grid runner) does not load the runner, the report and their libraries.
_EXPORTS = {
    "Grid": "grid", "GridCell": "grid", "cell_id": "grid", "load_grid": "grid",
    "EXIT_FAILED_CELLS": "runner", "EXIT_INTERRUPTED": "runner", "BenchRunner": "runner",
    "last_error": "runner", "summary_table": "runner",
    "cell_state": "state", "check_out_dir": "state",
}
__all__ = ["EXIT_FAILED_CELLS", "EXIT_INTERRUPTED", "BenchRunner", "Grid", "GridCell", "cell_id", "cell_state",
           "check_out_dir", "last_error", "load_grid", "summary_table"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


if TYPE_CHECKING:
    import pandas as pd


class _CallableBench(types.ModuleType):
    """``fedssl.bench`` is this package and the API's grid runner at once: importing a
    submodule makes the package the attribute ``fedssl.bench``, so the package itself
    must answer ``fedssl.bench(grid, out)``."""

    def __call__(self, grid: str | Path, out: str | Path, *, quiet: bool = True, skip_failed: bool = False,
                 fresh_process: bool = False) -> pd.DataFrame:
        """:func:`fedssl.bench.api.bench`."""
        from fedssl.bench.api import bench

        return bench(grid, out, quiet=quiet, skip_failed=skip_failed, fresh_process=fresh_process)


sys.modules[__name__].__class__ = _CallableBench
