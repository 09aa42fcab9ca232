"""Confusion matrices of finished open-world runs side by side, one panel per run.

    python benchmarks/openworld_confusion.py RUN_DIR [RUN_DIR ...] --out confusion.png [--titles a,b,c]

Each panel is the final model's share of each true class (rows) per predicted output
(columns: each seen class's own output, then the outputs matched to the unseen classes
over all samples), from ``summary.json`` or, for a run re-scored by
``benchmarks/openworld_robustness.py``, ``rescored.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fedssl.report.plots import confusion_panels, save


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--titles", help="comma-separated panel titles (default: the run directories' names)")
    args = ap.parse_args()
    titles = args.titles.split(",") if args.titles else [r.name for r in args.runs]
    summaries = []
    for r in args.runs:
        path = r / "rescored.json" if (r / "rescored.json").exists() else r / "summary.json"
        summaries.append(json.loads(path.read_text()))
    fig = confusion_panels(summaries, titles)
    if fig is None:
        print("error: a run has no confusion_matrix (closed world, or measured before it existed "
              "and not re-scored)", file=sys.stderr)
        raise SystemExit(2)
    print(save(fig, args.out))


if __name__ == "__main__":
    main()
