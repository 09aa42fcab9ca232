"""Incremental FedSSL under domain shift on Fashion-MNIST-C: every [stream] method.

Every run: T stages (default 5: rotate, gaussian_noise, contrast, gaussian_blur,
inverse at the reference's default severities), ``--rounds-per-stage`` rounds each,
``--clients`` clients all sampled each round, Dirichlet(0.5) label skew, 5% of each
client's samples labelled (labels at client) or, with ``--labels-at-server N``, none on
the clients and N per class on the server (in the current stage's domain).

  finetune_sup  supervised fine-tune on the newest stage (lower bound)
  finetune_fm   FixMatch fine-tune on the newest stage (lower bound)
  replay        FixMatch + reservoir buffer of stream.buffer samples per client
  retrain       FixMatch on every sample ever received (unbounded memory: upper bound)
  lwf           LwF: CE + distillation from the previous stage's global model
  ewc           EWC (TARGET's constants)
  fedmobile     FedMobile-like: FixMatch consistency + distillation, no raw buffer

The issue's grid (3 seeds) and the labels-at-server variant:

    python benchmarks/stream.py --out runs/stream --seeds 0,1,2
    python benchmarks/stream.py --out runs/stream_las --seeds 0,1,2 --labels-at-server 10

The same grid for ``fedssl bench``: benchmarks/grids/stream_grid.toml. Runs whose summary.json
exists are not rerun; ``--jobs`` runs go at once (each its own ``fedssl run``). Prints
and writes OUT/table.md (mean and std over seeds of the continual-learning figures,
peak client memory and sample passes per stage) and OUT/heatmap.png (R per method,
mean over seeds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fedssl.config import ConfigError, resolve
from fedssl.config.validate import own_keys_only

METHODS = {"finetune_sup": "supervised", "finetune_fm": "fixmatch", "replay": "replay", "retrain": "retrain",
           "lwf": "lwf", "ewc": "ewc", "fedmobile": "fedmobile"}
FIGURES = ("final_avg_acc", "avg_incremental_acc", "forgetting", "bwt", "fwt")


def overrides(method: str, seed: int, args: argparse.Namespace) -> dict:
    o = {"data.dataset": "fashion-mnist", "data.partition": "dirichlet", "data.alpha": 0.5,
         "data.num_clients": args.clients, "data.labeled_ratio": 0.05, "data.max_test_samples": args.test_samples,
         "federation.rounds": args.stages * args.rounds_per_stage, "federation.min_clients": 1,
         "stream.stages": args.stages, "stream.rounds_per_stage": args.rounds_per_stage, "stream.buffer": args.buffer,
         "client.algorithm": METHODS[method], "client.local_steps": args.local_steps,
         "client.batch_size": args.batch_size, "client.uratio": args.uratio, "client.lr_schedule": "constant",
         "run.seed": seed, "run.checkpoint_every": 0,
         # a loaded machine can take minutes to start Ray's actors: the first round must not time out
         "federation.round_timeout": 3600.0}
    if args.labels_at_server:
        o.update({"data.server_labels_per_class": args.labels_at_server, "data.labeled_ratio": 0.0})
    return o


def run_one(over: dict, extra: dict, run_dir: Path) -> None:
    flags = []
    for k, v in over.items():
        flags += ["--set", f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}"]
    for k, v in extra.items():
        flags += ["--set", f"{k}={v}"]
    proc = subprocess.run(["nice", sys.executable, "-m", "fedssl.cli", "run", "--quiet", "--overwrite",
                           "--out", str(run_dir), *flags], capture_output=True, text=True)
    tail = (proc.stderr.strip().splitlines() or [""])[-1]
    print(f"{run_dir}: exit {proc.returncode} {tail}", flush=True)


def _ms(vals: list[float], scale: float = 100.0) -> str:
    vals = [v * scale for v in vals]
    if not vals:
        return "-"
    return f"{statistics.mean(vals):.1f}" + (f" ± {statistics.stdev(vals):.1f}" if len(vals) > 1 else "")


def table(out: Path, methods: list[str], seeds: list[int]) -> tuple[str, dict[str, list[list[float]]]]:
    head = ("| method | seeds | final avg acc | avg incremental acc | forgetting | BWT | FWT | peak client memory "
            "(samples / MB) | sample passes per stage (client mean, last stage) |")
    lines = [head, "|" + "---|" * 9]
    heat: dict[str, list[list[float]]] = {}
    for m in methods:
        runs = [json.loads(p.read_text())["stream"] for s in seeds if (p := out / m / f"seed{s}" / "summary.json").exists()]
        runs = [r for r in runs if len(r.get("R", [])) and len(r["R"]) == len(r["R"][0])]
        if not runs:
            continue
        cells = [_ms([r[k] for r in runs]) for k in FIGURES]
        mem = f"{max(r['max_peak_samples'] for r in runs)} / {max(r['max_peak_bytes'] for r in runs) / 1e6:.2f}"
        passes = f"{statistics.mean(r['passes_per_stage_mean'][-1] for r in runs):.0f}"
        lines.append(f"| {m} | {len(runs)} | " + " | ".join(cells) + f" | {mem} | {passes} |")
        t = len(runs[0]["R"])
        heat[m] = [[statistics.mean(r["R"][i][j] for r in runs) for j in range(t)] for i in range(t)]
    return "\n".join(lines), heat


def heatmap(heat: dict[str, list[list[float]]], domains: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(heat)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.4), squeeze=False)
    for ax, (m, r) in zip(axes[0], heat.items()):
        ax.imshow(r, vmin=0, vmax=1, cmap="viridis")
        for i, row in enumerate(r):
            for j, v in enumerate(row):
                ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if v < 0.6 else "black")
        ax.set_title(m, fontsize=9)
        ax.set_xticks(range(len(domains)), domains, rotation=60, ha="right", fontsize=6)
        ax.set_yticks(range(len(domains)), [f"after {i}" for i in range(len(domains))], fontsize=6)
    fig.suptitle("R[i][j]: accuracy (%) after stage i on the test split in domain j (mean over seeds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/stream")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--stages", type=int, default=5)
    ap.add_argument("--rounds-per-stage", type=int, default=10)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--buffer", type=int, default=100)
    ap.add_argument("--local-steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--uratio", type=int, default=4)
    ap.add_argument("--test-samples", type=int, default=2000, help="test subset per domain (0 = all 10000)")
    ap.add_argument("--labels-at-server", type=int, default=0, help="server labels per class (0 = labels at client)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], help="extra section.key=value for every run")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    out, methods = Path(args.out), args.methods.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    if bad := [s for s in args.set if "=" not in s]:
        raise ConfigError(f"--set takes section.key=value, not {bad[0]!r}")
    extra = dict(s.split("=", 1) for s in args.set)
    todo = []
    for seed in seeds:
        for m in methods:
            run_dir = out / m / f"seed{seed}"
            if not (run_dir / "summary.json").exists() and not args.report_only:
                over = {k: v for k, v in overrides(m, seed, args).items() if k not in extra}
                # a key of another method's [client.<name>] section applies to that method's runs only
                mine = {k: v for k, v in own_keys_only({**over, **extra}).items() if k in extra}
                resolve(overrides={**over, **mine})  # bad settings fail here, before any run
                todo.append((over, mine, run_dir))
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        list(pool.map(lambda t: run_one(*t), todo))
    text, heat = table(out, methods, seeds)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text + "\n")
    if heat:
        first = next(p for m in methods for s in seeds if (p := out / m / f"seed{s}" / "summary.json").exists())
        heatmap(heat, json.loads(first.read_text())["stream"]["domains"], out / "heatmap.png")


if __name__ == "__main__":
    try:
        main()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
