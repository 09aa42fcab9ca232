"""Paired gains of finished labels-at-server runs, from the run directories
``benchmarks/labels_at_server.py`` writes: per seed, each variant's final accuracy
minus server-only's on the same seed (same 100- or 500-label draw), their mean, the
gap to a reference variant, and the gain at chosen rounds (how it grows with rounds).

    python benchmarks/labels_at_server_summary.py runs/las100 \\
        --setting L10_dir0.3 --variants semifl,semifl_ls30,central_alt_semifl \\
        --reference central_alt_semifl --seeds 0,1,2

A seed without a finished run of a variant is left out of that variant's row (the
row says how many seeds it has).
"""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path


def curve(run_dir: Path) -> dict[int, float]:
    """Test accuracy by evaluated round; {} when the run has not finished."""
    if not (run_dir / "summary.json").exists():
        return {}
    with open(run_dir / "metrics.csv") as f:
        return {int(r["round"]): float(r["acc_all"]) for r in csv.DictReader(f)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="the --out of labels_at_server.py")
    ap.add_argument("--setting", default="L10_dir0.3", help="L<labels>_<partition> directory")
    ap.add_argument("--baseline-setting", default="", help="where server-only lives (default: --setting; "
                    "server-only does not depend on the partition)")
    ap.add_argument("--variants", required=True, help="run directory names, comma-separated")
    ap.add_argument("--reference", default="", help="variant to report each row's gap to")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--rounds", default="10,20,50,100", help="rounds for the gain-by-round columns")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    rounds = [int(r) for r in args.rounds.split(",")]
    base_dir = args.out / (args.baseline_setting or args.setting) / "server_only"
    base = {s: curve(base_dir / f"seed{s}") for s in seeds}
    ref = {s: curve(args.out / args.setting / args.reference / f"seed{s}") for s in seeds} if args.reference else {}
    print(f"{args.setting}: final accuracy, gain over server-only in points (paired per seed)")
    head = ["variant", "seeds", "mean acc", "per-seed gain", "mean gain", *[f"gain @{r}" for r in rounds]]
    if ref:
        head.append(f"vs {args.reference}")
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for v in ["server_only", *args.variants.split(",")]:
        runs = {s: curve(args.out / args.setting / v / f"seed{s}") if v != "server_only" else base[s] for s in seeds}
        have = [s for s in seeds if runs[s] and base[s]]
        if not have:
            print(f"| {v} | 0 | - |" + " - |" * (len(head) - 3))
            continue
        last = max(runs[have[0]])
        gains = [100 * (runs[s][last] - base[s][last]) for s in have]
        by_round = [statistics.mean(100 * (runs[s][r] - base[s][r]) for s in have)
                    if all(r in runs[s] and r in base[s] for s in have) else float("nan") for r in rounds]
        row = [v, str(len(have)), f"{statistics.mean(runs[s][last] for s in have):.4f}",
               " / ".join(f"{g:+.1f}" for g in gains), f"**{statistics.mean(gains):+.1f}**",
               *[f"{g:+.1f}" for g in by_round]]
        if ref:
            both = [s for s in have if ref.get(s)]
            row.append(f"{statistics.mean(100 * (runs[s][last] - ref[s][last]) for s in both):+.1f} "
                       f"({len(both)} seeds)" if both else "-")
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
