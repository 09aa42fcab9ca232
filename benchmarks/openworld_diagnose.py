"""Why do unseen clusters merge? Per-round diagnostics of one FedoSSL (or ORCA) run.

Runs one simulation in this process and, after every round's central evaluation,
records for the global model and the server's calibrated centroids C:

- ``slot_of_<u>`` / ``slot_share_<u>``: the centroid slot (argmax z C^T) holding most
  of unseen class u's test samples, and that share;
- ``head_of_<u>`` / ``head_share_<u>``: the same for the classifier's output;
- ``slot_stability``: share of test samples whose slot is the one they had the round
  before (1.0 when slots keep their content);
- ``slot_purity``: mean over used slots of the majority class's share of the slot;
- ``merged_slots`` / ``merged_heads``: slots (head outputs) that hold the majority of
  two or more classes: a merge;
- ``acc_class_<k>``, ``acc_unseen``, ``acc_global_unseen``: the usual evaluation.

Writes OUT/diagnose.csv (one row per round) and OUT/diagnose.png.

    python benchmarks/openworld_diagnose.py --out runs/diag/s22 --set run.seed=22 \\
        --set data.seen_classes=5 --set data.num_clients=6 --set data.globally_unseen=2
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fedssl.config import resolve
from fedssl.simulation import run_experiment
from fedssl.server.loop import ServerRunner

BASE = {
    "data.dataset": "fashion-mnist", "data.partition": "openworld", "data.labeled_ratio": 0.5,
    "client.fedossl.pretrain_rounds": 3, "server.strategy": "fedossl", "client.algorithm": "fedossl",
    "run.eval_every": 1, "run.checkpoint_every": 0,
}


def majority(assign: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """Count matrix [slot, class]."""
    m = np.zeros((k, k), dtype=np.int64)
    np.add.at(m, (assign, y), 1)
    return m


def merged(m: np.ndarray) -> int:
    """Slots that hold the largest part of two or more classes."""
    owner = m.argmax(axis=0)  # class -> slot holding most of it
    return int(sum(np.sum(owner == j) >= 2 for j in range(m.shape[0])))


def diagnose_round(runner: ServerRunner, rnd: int, prev: dict) -> dict[str, float]:
    model, k, num_seen = runner.model, runner.cfg.num_classes, runner.cfg.num_seen
    y = np.asarray(runner.test_y)
    model.eval()
    with torch.no_grad():
        z = torch.cat([F.normalize(model.features(runner.test_x[i:i + 1000]), dim=1)
                       for i in range(0, len(y), 1000)])
        head = torch.cat([model(runner.test_x[i:i + 1000]) for i in range(0, len(y), 1000)]).argmax(1).numpy()
    row: dict[str, float] = {}
    mh = majority(head, y, k)
    row["merged_heads"] = merged(mh)
    c = getattr(runner.strategy, "global_centroids", None)
    slot = None
    if c is not None:
        slot = (z.double() @ torch.as_tensor(c, dtype=torch.float64).T).argmax(1).numpy()
        ms = majority(slot, y, k)
        used = ms.sum(axis=1) > 0
        row["slot_purity"] = float((ms.max(axis=1)[used] / ms.sum(axis=1)[used]).mean())
        row["merged_slots"] = merged(ms)
        row["slot_stability"] = float((slot == prev["slot"]).mean()) if prev.get("slot") is not None else float("nan")
    for u in range(num_seen, k):
        sel = y == u
        counts = np.bincount(head[sel], minlength=k)
        row[f"head_of_{u}"], row[f"head_share_{u}"] = int(counts.argmax()), float(counts.max() / sel.sum())
        if slot is not None:
            counts = np.bincount(slot[sel], minlength=k)
            row[f"slot_of_{u}"], row[f"slot_share_{u}"] = int(counts.argmax()), float(counts.max() / sel.sum())
    prev["slot"] = slot
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="run directory, or the plot file with --compare")
    ap.add_argument("--set", action="append", default=[], help="section.key=value (repeatable)")
    ap.add_argument("--compare", nargs="+", metavar="NAME=DIR", help="plot finished diagnoses side by side")
    args = ap.parse_args()
    if args.compare:
        compare(dict(c.split("=", 1) for c in args.compare), Path(args.out))
        return
    out = Path(args.out)
    overrides = {**BASE, **dict(s.split("=", 1) for s in args.set), "run.out_dir": str(out / "run")}
    cfg = resolve(overrides=overrides)
    rows: list[dict[str, float]] = []
    prev: dict = {}
    original = ServerRunner.evaluate

    def evaluate(self: ServerRunner, server_round: int, arrays):  # noqa: ANN001 - Flower's ArrayRecord
        metrics = original(self, server_round, arrays)
        if server_round > 0:
            rows.append({"round": server_round, **{k: v for k, v in metrics.items() if k.startswith("acc")},
                         **diagnose_round(self, server_round, prev)})
            write_csv(rows, out / "diagnose.csv")  # every round: a long run can be read while it goes
        return metrics

    ServerRunner.evaluate = evaluate
    try:
        run_experiment(cfg, quiet=True)
    finally:
        ServerRunner.evaluate = original
    plot(rows, cfg.num_seen, cfg.num_classes, out / "diagnose.png")
    for r in rows:
        print(" ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()
                       if k == "round" or k.startswith(("acc_global", "acc_unseen", "merged", "slot_stab",
                                                        "slot_pur", "slot_of", "head_of", "acc_class"))))


def write_csv(rows: list[dict[str, float]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def plot(rows: list[dict[str, float]], num_seen: int, k: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    rounds = [r["round"] for r in rows]
    for u in range(num_seen, k):
        ax[0].plot(rounds, [r.get(f"acc_class_{u}") for r in rows], label=f"class {u}")
    ax[0].set(xlabel="round", ylabel="test accuracy", title="unseen classes")
    ax[0].legend(fontsize=7)
    for key in ("slot_stability", "slot_purity", "merged_slots", "merged_heads"):
        ax[1].plot(rounds, [r.get(key, float("nan")) for r in rows], label=key)
    ax[1].set(xlabel="round", title="slots")
    ax[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def compare(runs: dict[str, str], path: Path) -> None:
    """Globally-unseen accuracy, seen accuracy and slot stability per round, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(13, 3.5))
    for name, d in runs.items():
        with open(Path(d) / "diagnose.csv") as f:
            rows = list(csv.DictReader(f))
        rounds = [int(r["round"]) for r in rows]
        for a, key in zip(ax, ("acc_global_unseen", "acc_seen", "slot_stability")):
            a.plot(rounds, [float(r[key]) if r.get(key) else float("nan") for r in rows], label=name)
            a.set(xlabel="round", title=key)
    ax[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    main()
