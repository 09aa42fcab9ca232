"""Clients per second on one GPU: fractional ``federation.num_gpus`` against one client per GPU.

Each setting is a real short ``fedssl`` simulation (Ray backend, ``fixmatch`` by
default) on real Fashion-MNIST: N clients, R rounds, every client trains ``--steps``
local steps per round, with its shard, views and model on the GPU. With
``federation.num_gpus = g`` Ray runs up to 1/g clients on a GPU at once (each with
``federation.num_cpus`` cores), so small models can fill the device.

Reported per setting: steady clients/s (rounds after the first, which pays Ray's
cold start and CUDA initialisation), total clients/s over all rounds, the speed-up
over num_gpus = 1, and the per-update data-preparation and training seconds from
metrics.csv. Needs CUDA; without it, it stops with a one-line error.

    python benchmarks/gpu.py [--fractions 1,0.5,0.25] [--clients 32] [--rounds 3] [--steps 20] [--model cnn]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch


def run_setting(num_gpus: float, a: argparse.Namespace) -> dict[str, float]:
    from fedssl.config import resolve
    from fedssl.simulation import run_experiment

    out = Path(tempfile.mkdtemp(prefix="gpubench_"))
    cpus = len(os.sched_getaffinity(0))
    per_client_cpus = max(1.0, min(4.0, cpus * num_gpus / max(1, torch.cuda.device_count())))
    cfg = resolve(overrides={
        "client.algorithm": a.algorithm, "model.name": a.model, "data.num_clients": a.clients,
        "federation.rounds": a.rounds, "client.local_steps": a.steps,
        "federation.num_gpus": num_gpus, "federation.num_cpus": per_client_cpus,
        "federation.clients_per_node": 1, "run.out_dir": str(out),
        "run.eval_every": a.rounds, "run.checkpoint_every": 0,
    })
    t0 = time.perf_counter()
    run_experiment(cfg, quiet=True)
    wall = time.perf_counter() - t0
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    rounds_s = json.loads((out / "summary.json").read_text())["round_train_s"]
    clients = [int(r["clients"]) for r in rows]
    steady_n, steady_s = sum(clients[1:]) or clients[0], sum(rounds_s[1:]) or rounds_s[0]
    last = rows[-1]
    return {"num_gpus": num_gpus, "per_gpu": int(1 / num_gpus), "num_cpus": per_client_cpus,
            "steady": steady_n / steady_s, "total": sum(clients) / sum(rounds_s), "wall_s": wall,
            "t_data_s": float(last.get("t_data_s") or "nan"), "t_train_s": float(last.get("t_train_s") or "nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fractions", default="1,0.5,0.25", help="federation.num_gpus values")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--algorithm", default="fixmatch")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("error: benchmarks/gpu.py needs a CUDA GPU (torch.cuda.is_available() is False here)",
              file=sys.stderr)
        sys.exit(2)
    try:
        fractions = [float(v) for v in a.fractions.split(",")]
    except ValueError:
        print(f"error: --fractions must be comma-separated numbers, got {a.fractions!r}", file=sys.stderr)
        sys.exit(2)
    if not all(0 < f <= 1 for f in fractions):
        print(f"error: --fractions must lie in (0, 1], got {a.fractions!r}", file=sys.stderr)
        sys.exit(2)
    os.environ.setdefault("FEDSSL_NO_DOWNLOAD", "1")
    print(f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}; {a.algorithm} on {a.model},"
          f" {a.clients} clients, {a.rounds} rounds, {a.steps} local steps")
    rows = [run_setting(g, a) for g in fractions]
    base = next((r["steady"] for r in rows if r["num_gpus"] == 1.0), rows[0]["steady"])
    print(f"{'num_gpus':>9}{'per GPU':>8}{'num_cpus':>9}{'steady cl/s':>12}{'total cl/s':>11}"
          f"{'speed-up':>9}{'t_data_s':>9}{'t_train_s':>10}{'wall_s':>8}")
    for r in rows:
        print(f"{r['num_gpus']:>9.2f}{r['per_gpu']:>8d}{r['num_cpus']:>9.1f}{r['steady']:>12.2f}"
              f"{r['total']:>11.2f}{r['steady'] / base:>8.2f}x{r['t_data_s']:>9.3f}{r['t_train_s']:>10.3f}"
              f"{r['wall_s']:>8.1f}")


if __name__ == "__main__":
    main()
