"""``fedssl.bench(grid, out)``: the ``fedssl bench`` command as a function (re-exported by
:mod:`fedssl.api`; the package :mod:`fedssl.bench` answers the call itself)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


def bench(grid: str | Path, out: str | Path, *, quiet: bool = True, skip_failed: bool = False,
          fresh_process: bool = False) -> pd.DataFrame:
    """Run (or resume) the grid file ``grid`` into ``out``, as ``fedssl bench``, and return
    results.csv: one row per cell with its varied keys, status and final metrics. Failed
    cells are rows with status ``failed`` (rerun to retry them); bad input raises
    :class:`fedssl.ConfigError`."""
    import pandas as pd

    from fedssl.bench.grid import load_grid
    from fedssl.bench.runner import BenchRunner
    from fedssl.bench.state import check_out_dir, exclusive
    from fedssl.report.model import RESULTS_CSV

    g = load_grid(grid, out)
    check_out_dir(g)
    g.out.mkdir(parents=True, exist_ok=True)
    with exclusive(g.out):
        runner = BenchRunner(g, quiet=quiet, skip_failed=skip_failed, fresh=fresh_process)
        runner.prepare()
        runner.run()
    return pd.read_csv(g.out / RESULTS_CSV)
