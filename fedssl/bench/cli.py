"""``fedssl bench --grid FILE.toml --out DIR``."""

from __future__ import annotations

import argparse
from typing import Any

from fedssl.bench.grid import load_grid
from fedssl.report.layout import runs_dir
from fedssl.bench.runner import BenchRunner
from fedssl.bench.state import cell_state, check_out_dir, exclusive


def cmd_bench(args: argparse.Namespace) -> int:
    grid = load_grid(args.grid, args.out)
    check_out_dir(grid)
    if args.dry_run:
        for c in grid.order():
            print(f"{cell_state(grid, c):11s} {c.id}")
        print(f"{len(grid.cells)} cells; run directories under {runs_dir(grid.out)}")
        return 0
    grid.out.mkdir(parents=True, exist_ok=True)
    with exclusive(grid.out):
        runner = BenchRunner(grid, quiet=args.quiet, skip_failed=args.skip_failed, fresh=args.fresh_process)
        runner.prepare()
        return runner.run()


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("bench", help="run a grid of experiments (resumable)",
                              description="Run every cell of a grid (the Cartesian product of the "
                                          "grid file's [axes]) as its own `fedssl run` (forked from a "
                                          "warm worker that keeps the imports and a Ray cluster across "
                                          "cells), skipping "
                                          "cells already finished in DIR; then write results.csv, "
                                          "summary.md and report.html.")
    p.add_argument("--grid", required=True, metavar="FILE.toml", help="grid file ([base] and [axes])")
    p.add_argument("--out", required=True, metavar="DIR", help="bench directory (created or resumed)")
    p.add_argument("--quiet", action="store_true", help="no progress bar; failures and the final table only")
    p.add_argument("--skip-failed", action="store_true",
                   help="do not retry cells that failed in an earlier invocation")
    p.add_argument("--fresh-process", action="store_true",
                   help="run each cell as a fresh `fedssl run` process (slower: every cell pays the imports "
                        "and Ray's start-up) instead of in the warm worker; for debugging")
    p.add_argument("--dry-run", action="store_true", help="validate the grid, list the cells and their state")
    p.set_defaults(func=cmd_bench)
