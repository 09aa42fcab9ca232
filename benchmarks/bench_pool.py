"""Per-cell overhead of ``fedssl bench``: a fresh ``fedssl run`` process per cell
(``--fresh-process``) against cells forked from the warm worker (the
default), on the small example grid (examples/closed_world_small.toml: Fashion-MNIST, 10
clients, Dirichlet 0.3, 1% labels, 2,000 test images, CNN; its 12 cells, 2 strategies x 3
algorithms x 2 seeds) with fewer rounds and local steps: the overhead is per cell, not per round.

overhead = the cell's wall time as the bench measures it (``cells/<id>.json`` cell_s:
from launching the cell to its exit) minus the run's own ``elapsed_s`` (summary.json:
from the start of round 1 to the end of the last round, evaluation included). So the
overhead is everything around the rounds: process start, imports, Ray start-up, data
loading and partitioning, model set-up, the initial central evaluation, shutdown.
Round 1 itself still carries the start of the clients' Ray actors (new worker processes
that import torch and the ClientApp, in either mode); "round 1 extra" shows it
(round 1's ``round_s`` minus the median of the later rounds).

Both grids run the same cells; the script also checks that their results (every
non-timing column of metrics.csv) are identical.

    python benchmarks/bench_pool.py [--rounds 3] [--local-steps 5] [--seeds 0,1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
BASE = """
"data.dataset" = "fashion-mnist"
"data.partition" = "dirichlet"
"data.alpha" = 0.3
"data.num_clients" = 10
"data.labeled_ratio" = 0.01
"data.max_test_samples" = 2000
"federation.rounds" = {rounds}
"federation.fraction_train" = 0.5
"federation.min_clients" = 5
"client.local_steps" = {steps}
"client.batch_size" = 32
"model.name" = "cnn"
"""


def run_grid(grid: Path, out: Path, fresh: bool) -> tuple[float, list[dict]]:
    cmd = [sys.executable, "-m", "fedssl.cli", "bench", "--grid", str(grid), "--out", str(out), "--quiet"]
    t0 = time.monotonic()
    proc = subprocess.run(cmd + (["--fresh-process"] if fresh else []), cwd=ROOT, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        sys.exit(f"fedssl bench failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    cells = json.loads((out / "grid.json").read_text())["cells"]
    rows = []
    for c in cells:
        rec = json.loads((out / "cells" / f"{c['id']}.json").read_text())
        summ = json.loads((out / "runs" / c["id"] / "summary.json").read_text())
        m = pd.read_csv(out / "runs" / c["id"] / "metrics.csv")
        later = m["round_s"].iloc[1:]
        rows.append({"id": c["id"], "cell_s": rec["cell_s"], "elapsed_s": summ["elapsed_s"],
                     "overhead_s": rec["cell_s"] - summ["elapsed_s"],
                     "round1_extra_s": m["round_s"].iloc[0] - (later.median() if len(later) else 0.0),
                     "metrics": m[[k for k in m.columns if k not in ("wall_s", "round_s") and not k.startswith("t_")]]})
    return wall, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--local-steps", type=int, default=5)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--algorithms", default="supervised,fixmatch,meanteacher")
    ap.add_argument("--strategies", default="fedavg,fedadam", help="the small grid's two; one for half the cells")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_pool_"))
    grid = tmp / "grid.toml"
    algos = ", ".join(f'"{a}"' for a in args.algorithms.split(","))
    strategies = ", ".join(f'"{s}"' for s in args.strategies.split(","))
    grid.write_text("[base]\n" + BASE.format(rounds=args.rounds, steps=args.local_steps)
                    + f'\n[axes]\n"server.strategy" = [{strategies}]\n"client.algorithm" = [{algos}]\n'
                    f'"run.seed" = [{args.seeds}]\n')
    results = {}
    for name, fresh in (("fresh process per cell", True), ("warm worker", False)):
        results[name] = run_grid(grid, tmp / ("fresh" if fresh else "warm"), fresh)
    (wall_f, fresh_rows), (wall_w, warm_rows) = results.values()
    print(f"{len(fresh_rows)} cells, {args.rounds} rounds x {args.local_steps} local steps; seconds\n")
    print(f"{'cell':<45} {'fresh: cell / run / overhead':>30} {'warm: cell / run / overhead':>30}")
    for f, w in zip(fresh_rows, warm_rows):
        print(f"{f['id']:<45} {f['cell_s']:>10.2f} {f['elapsed_s']:>8.2f} {f['overhead_s']:>10.2f} "
              f"{w['cell_s']:>10.2f} {w['elapsed_s']:>8.2f} {w['overhead_s']:>10.2f}")
    for label, rows_ in (("first cell", slice(0, 1)), ("later cells (mean)", slice(1, None)),
                         ("all cells (mean)", slice(None))):
        f = statistics.mean(r["overhead_s"] for r in fresh_rows[rows_])
        w = statistics.mean(r["overhead_s"] for r in warm_rows[rows_])
        print(f"overhead per cell, {label:<19} fresh {f:6.2f}   warm {w:6.2f}")
    f1 = statistics.mean(r["round1_extra_s"] for r in fresh_rows)
    w1 = statistics.mean(r["round1_extra_s"] for r in warm_rows)
    print(f"round 1 extra (client actors' start-up, mean)  fresh {f1:6.2f}   warm {w1:6.2f}")
    print(f"whole grid (fedssl bench, report included)     fresh {wall_f:6.1f}   warm {wall_w:6.1f}")
    # everything the user waits for beyond the rounds, spread over the cells: the bench's
    # own start, the report after every cell and at the end included
    gf = (wall_f - sum(r["elapsed_s"] for r in fresh_rows)) / len(fresh_rows)
    gw = (wall_w - sum(r["elapsed_s"] for r in warm_rows)) / len(warm_rows)
    print(f"(whole grid - rounds) / cells                  fresh {gf:6.2f}   warm {gw:6.2f}")
    same = all(f["metrics"].equals(w["metrics"]) for f, w in zip(fresh_rows, warm_rows))
    print(f"results identical (every non-timing column of metrics.csv): {'yes' if same else 'NO'}")
    print(f"files: {tmp}")


if __name__ == "__main__":
    main()
