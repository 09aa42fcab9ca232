"""Label scarcity on Fashion-MNIST: does FixMatch (EMA teacher) beat supervised?

Two settings from the foundation issue, each run for `supervised` and `fixmatch` with
identical local steps (40 in A, 20 in B), seeds and partitions:
  A: IID, 10 clients, all sampled, 1% labels, 50 rounds
  B: Dirichlet alpha=0.5, 20 clients, 5% labels, 30 rounds
Prints final/best accuracy and writes learning curves to OUT/curves.png.

    python benchmarks/label_scarcity.py --out runs/label_scarcity [--rounds-a 50 --rounds-b 30]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from fedssl.config import resolve
from fedssl.simulation import run_experiment

STEPS = {"A_iid_1pct": 40, "B_dir05_5pct": 20}  # FixMatch needs many unlabeled steps at 1%
SETTINGS = {
    "A_iid_1pct": {"data.partition": "iid", "data.num_clients": 10, "data.labeled_ratio": 0.01},
    "B_dir05_5pct": {"data.partition": "dirichlet", "data.alpha": 0.5, "data.num_clients": 20,
                     "data.labeled_ratio": 0.05},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/label_scarcity")
    ap.add_argument("--rounds-a", type=int, default=50)
    ap.add_argument("--rounds-b", type=int, default=30)
    ap.add_argument("--local-steps", type=int, default=0,
                    help="local steps per round (default: 40 for A, 20 for B)")
    ap.add_argument("--settings", default="A_iid_1pct,B_dir05_5pct")
    ap.add_argument("--set", action="append", default=[], help="extra section.key=value for every run")
    args = ap.parse_args()
    out = Path(args.out)
    extra = dict(s.split("=", 1) for s in args.set)
    results = []
    for name in args.settings.split(","):
        rounds = args.rounds_a if name.startswith("A") else args.rounds_b
        for algo in ("supervised", "fixmatch"):
            run_dir = out / name / algo
            cfg = resolve(overrides={**SETTINGS[name], "client.algorithm": algo, "federation.rounds": rounds,
                                     "client.local_steps": args.local_steps or STEPS[name], "run.out_dir": str(run_dir),
                                     "run.checkpoint_every": 0, **extra})
            if (run_dir / "summary.json").exists():
                print(f"{name}/{algo}: done already")
            else:
                print(f"{name}/{algo}: running {rounds} rounds ...", flush=True)
                run_experiment(cfg, quiet=True)
            with open(run_dir / "metrics.csv") as f:
                rows = list(csv.DictReader(f))
            accs = [float(r["acc_all"]) for r in rows]
            results.append((name, algo, accs, float(rows[-1]["wall_s"])))
    print(f"\n{'setting':14} {'algorithm':11} {'final':>7} {'best':>7} {'@10':>7} {'@20':>7} {'wall_s':>7}")
    for name, algo, accs, wall in results:
        at = lambda r: f"{accs[r - 1]:.4f}" if len(accs) >= r else "-"  # noqa: E731
        print(f"{name:14} {algo:11} {accs[-1]:7.4f} {max(accs):7.4f} {at(10):>7} {at(20):>7} {wall:7.0f}")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SETTINGS), figsize=(11, 4))
    for ax, name in zip(axes, SETTINGS):
        for n, algo, accs, _ in results:
            if n == name:
                ax.plot(range(1, len(accs) + 1), accs, label=algo)
        ax.set_title(name)
        ax.set_xlabel("round")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=120)
    print(f"curves: {out / 'curves.png'}")


if __name__ == "__main__":
    main()
