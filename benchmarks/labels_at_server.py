"""Labels at server on Fashion-MNIST: server-only vs FedAvg+FixMatch vs SemiFL vs FedSTO,
with a centralized SSL upper reference.

Every run: 100 clients holding only unlabeled data, 10 sampled per round, the server
holding ``labels`` samples per class and training on them after every aggregation
(``server.train_steps``) and before round 1 (``server.warmup_steps``).

  server_only  client.algorithm=supervised: clients have no label, so they return the
               global model untouched; all learning is the server's (the baseline)
  fixmatch     FedAvg + FixMatch (per-client EMA teacher), + server step
  semifl       SemiFL: fixed global pseudo-labels, Fix + Mix loss, equal weights,
               FedAvgM with lr 1 and momentum 0.5 in every partition (SemiFL's make.py)
  fedsto       FedSTO: backbone-only phase, then full training with SRIP on the head
  fl2          (FL)^2: client-specific adaptive thresholds, ASAM consistency on the
               confident samples, updates weighted by 1 - the client's mean confidence;
               FedAvgM with lr 1 and momentum 0.5 (the reference's, every partition)
  central      centralized SSL upper reference: one client holding ALL the data with
               the same number of labels per class (labels / 6000 of Fashion-MNIST's
               6000 per class: exactly that many per class), FixMatch's joint loss,
               10 x local steps per round (as many steps per round as 10 clients), no
               server labels or server step
  central_alt  one client holding all the unlabeled data, FixMatch, 10 x local steps,
               alternating with the server step (the federated pipeline with one client);
               with ``--tag _semifl --set client.algorithm=semifl`` it is the centralized
               SemiFL reference: the same labels, loss and steps per round, no partition

The full grid of the issue (labels 10,50 x iid,dir0.3 x 3 seeds x 100 rounds):

    python benchmarks/labels_at_server.py --out runs/las --labels 10,50 \\
        --partitions iid,dir0.3 --seeds 0,1,2 --rounds 100

Runs whose summary.json exists are not rerun. Prints the table (final accuracy, mean
and std over seeds, gain over server-only, gap to central) and writes OUT/table.md,
OUT/results.csv and OUT/curves.png (mean accuracy per round).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import time
from pathlib import Path

from fedssl.config import resolve

METHODS = ("server_only", "fixmatch", "semifl", "fedsto", "fl2", "central", "central_alt")
TRAIN_PER_CLASS = 6000  # Fashion-MNIST
CENTRAL_STEPS = 10  # the central references' steps per round, per client they stand for
PARTITIONS = {"iid": {"data.partition": "iid"},
              "dir0.3": {"data.partition": "dirichlet", "data.alpha": 0.3}}


def overrides(method: str, partition: str, labels: int, seed: int, args: argparse.Namespace) -> dict:
    o = {**PARTITIONS[partition], "data.server_labels_per_class": labels, "data.labeled_ratio": 0.0,
         "data.num_clients": args.clients, "federation.fraction_train": args.per_round / args.clients,
         "federation.min_clients": 1, "federation.rounds": args.rounds,
         "server.train_steps": args.server_steps,
         "server.warmup_steps": args.warmup_steps, "run.seed": seed, "run.checkpoint_every": 0}
    # the client step: each method's own defaults unless given (e.g. SemiFL's 5 epochs of batch 10)
    o.update({k: v for k, v in (("client.local_steps", args.local_steps), ("client.batch_size", args.batch_size),
                                ("client.uratio", args.uratio)) if v is not None})
    if method == "server_only":
        o["client.algorithm"] = "supervised"
    elif method in ("fixmatch", "fedsto", "semifl", "fl2"):
        o["client.algorithm"] = method
    elif method in ("central", "central_alt"):
        o.update({"client.algorithm": "fixmatch", "data.num_clients": 1, "data.partition": "iid",
                  "federation.fraction_train": 1.0,
                  "client.local_steps": (args.local_steps or CENTRAL_STEPS) * args.per_round})
        if method == "central":
            o.update({"data.server_labels_per_class": 0, "data.labeled_ratio": labels / TRAIN_PER_CLASS,
                      "server.train_steps": 0, "server.warmup_steps": 0})
    if method in ("semifl", "fl2"):  # both codes: global momentum 0.5 in every partition, server lr 1
        o.update({"server.strategy": "fedavgm", "server.server_lr": 1.0, "server.server_momentum": 0.5})
    return o


def run_with_retries(overrides: dict, raw: dict, run_dir: Path, attempts: int = 3) -> None:
    """One `fedssl run` per experiment, in its own process: Ray's node start can time
    out on an overloaded machine, and a crashed in-process simulation can leave its
    ServerApp thread behind; a fresh process per attempt leaves nothing behind."""
    flags = []
    for k, v in overrides.items():
        flags += ["--set", f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}"]
    for k, v in raw.items():  # --set text from our own command line, passed on as typed
        flags += ["--set", f"{k}={v}"]
    for i in range(attempts):
        proc = subprocess.run([sys.executable, "-m", "fedssl.cli", "run", "--quiet", "--overwrite",
                               "--out", str(run_dir), *flags], capture_output=True, text=True)
        if proc.returncode == 0 and (run_dir / "summary.json").exists():
            return
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        print(f"{run_dir}: attempt {i + 1} failed ({tail}); retrying", flush=True)
        time.sleep(5)
    raise SystemExit(f"error: {run_dir} failed {attempts} times")


def read_curve(run_dir: Path) -> list[float]:
    """Test accuracy at every evaluated round."""
    with open(run_dir / "metrics.csv") as f:
        return [float(r["acc_all"]) for r in csv.DictReader(f)]


def eval_rounds(run_dir: Path) -> list[int]:
    with open(run_dir / "metrics.csv") as f:
        return [int(r["round"]) for r in csv.DictReader(f)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/labels_at_server")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--labels", default="10", help="server labels per class, comma-separated")
    ap.add_argument("--partitions", default="dir0.3", help="iid,dir0.3")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--per-round", type=int, default=10)
    ap.add_argument("--local-steps", type=int, default=None,
                    help="fixed client steps per round (default: each method's own, e.g. SemiFL's 5 epochs)")
    ap.add_argument("--batch-size", type=int, default=None, help="client batch size (default: each method's)")
    ap.add_argument("--uratio", type=int, default=None, help="client uratio (default: each method's)")
    ap.add_argument("--server-steps", type=int, default=50)
    ap.add_argument("--warmup-steps", type=int, default=500)
    ap.add_argument("--set", action="append", default=[], help="extra section.key=value for every run")
    ap.add_argument("--tag", default="", help="suffix of the run directories (ablations)")
    ap.add_argument("--report-only", action="store_true", help="tabulate finished runs, start none")
    args = ap.parse_args()
    out = Path(args.out)
    extra = dict(s.split("=", 1) for s in args.set)
    curves: dict[tuple, list[list[float]]] = {}
    x_rounds: dict[tuple, list[int]] = {}
    for labels in [int(x) for x in args.labels.split(",")]:
        for part in args.partitions.split(","):
            for method in args.methods.split(","):
                for seed in [int(x) for x in args.seeds.split(",")]:
                    run_dir = out / f"L{labels}_{part}" / f"{method}{args.tag}" / f"seed{seed}"
                    if not (run_dir / "summary.json").exists():
                        if args.report_only:
                            continue
                        over = overrides(method, part, labels, seed, args)
                        over = {k: v for k, v in over.items() if k not in extra}
                        resolve(overrides={**over, **extra})  # bad settings fail here, before any run
                        t0 = time.time()
                        run_with_retries(over, extra, run_dir)
                        print(f"L{labels} {part} {method}{args.tag} seed {seed}: "
                              f"{read_curve(run_dir)[-1]:.4f} ({time.time() - t0:.0f} s)", flush=True)
                    curves.setdefault((labels, part, method + args.tag), []).append(read_curve(run_dir))
                    x_rounds[(labels, part, method + args.tag)] = eval_rounds(run_dir)
    report(out, curves, x_rounds)


def report(out: Path, curves: dict[tuple, list[list[float]]], x_rounds: dict[tuple, list[int]]) -> None:
    rows = []
    for (labels, part, method), runs in curves.items():
        finals = [c[-1] for c in runs]
        base = curves.get((labels, part, "server_only"))
        central = curves.get((labels, part, "central"))
        mean = statistics.mean(finals)
        rows.append({"labels": labels, "partition": part, "method": method, "seeds": len(finals),
                     "final_mean": mean, "final_std": statistics.pstdev(finals),
                     "gain_vs_server_only": mean - statistics.mean(c[-1] for c in base) if base else float("nan"),
                     "gap_to_central": statistics.mean(c[-1] for c in central) - mean if central else float("nan"),
                     "rounds": x_rounds[(labels, part, method)][-1]})
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = ["| labels/class | partition | method | seeds | rounds | final acc (mean ± std) | vs server-only | gap to central |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['labels']} | {r['partition']} | {r['method']} | {r['seeds']} | {r['rounds']} | "
                     f"{r['final_mean']:.4f} ± {r['final_std']:.4f} | {r['gain_vs_server_only']:+.4f} | "
                     f"{r['gap_to_central']:+.4f} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = sorted({(k[0], k[1]) for k in curves})
    fig, axes = plt.subplots(1, len(settings), figsize=(6 * len(settings), 4), squeeze=False)
    for ax, (labels, part) in zip(axes[0], settings):
        for (lb, pt, method), runs in curves.items():
            if (lb, pt) != (labels, part):
                continue
            n = min(len(c) for c in runs)
            mean = [statistics.mean(c[i] for c in runs) for i in range(n)]
            ax.plot(x_rounds[(lb, pt, method)][:n], mean, marker="o", label=method)
        ax.set_title(f"Fashion-MNIST, {labels} server labels/class, {part}")
        ax.set_xlabel("round")
        ax.set_ylabel("test accuracy (mean over seeds)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)


if __name__ == "__main__":
    main()
