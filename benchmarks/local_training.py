"""Local training at the speed of the model? fedssl's client round beside a bare loop.

  (a) fedssl: ``fedssl.training.train_client``, the path every ClientApp runs, on a
      real Fashion-MNIST client shard (default partition, client 0), for ``--steps``
      steps. Its own timings split the round into data preparation (sampling,
      weak/strong augmentation, normalisation, transfer) and compute (forward,
      backward, SGD step, EMA teacher update).
  (b) bare: the same model, algorithm step (FixMatch: teacher on the weak view,
      student on labeled + strong views, SGD, EMA) and batch shapes, on batches
      normalised once up front: no augmentation, no sampling. The compute floor.

The machine may be shared, so (a) and (b) run interleaved ``--reps`` times and the
medians are reported; ratios matter, not absolute seconds. On the CPU the default
clock is the thread's CPU time (``--clock thread``): with one torch thread it is the
work done, without the time spent waiting for other processes; ``--clock wall`` gives
wall time (always used on CUDA, where the work is on the device).

    python benchmarks/local_training.py [--algorithm fixmatch] [--steps 40] [--reps 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import types

import torch
import torch.nn.functional as F

import fedssl.training
from fedssl.config import resolve
from fedssl.data import client_shard
from fedssl.data.augment import normalize
from fedssl.data.tensors import client_data
from fedssl.models import run_model
from fedssl.training import build_algorithm, ema_update, train_client


def fedssl_round(cfg, data, kw, device, rnd: int) -> dict[str, float]:
    model = run_model(cfg, *kw).to(device)
    res = train_client(model, build_algorithm(cfg), data, cfg, server_round=rnd, partition_id=0,
                       state=None, device=device)
    return res.timings


def bare_round(cfg, data, kw, device, steps: int) -> float:
    """FixMatch's step on pre-normalised tensors (other algorithms: plain CE on the
    same shapes), timed like ``train_s``: forward + backward + step (+ EMA)."""
    c = cfg.client
    model = run_model(cfg, *kw).to(device)
    teacher = copy.deepcopy(model).eval()
    opt = torch.optim.SGD(model.parameters(), lr=c.lr, momentum=c.momentum,
                          weight_decay=c.weight_decay, nesterov=True)
    nb, nu = c.batch_size, c.batch_size * c.uratio
    xl = normalize(data.x_l[torch.arange(nb) % len(data.y_l)]).to(device)
    yl = data.y_l[torch.arange(nb) % len(data.y_l)].to(device)
    xu = normalize(data.x_u[:nu]).to(device)
    ssl = cfg.client.algorithm != "supervised"
    _sync(device)
    t0 = CLOCK()
    for _ in range(steps):
        if ssl:
            with torch.no_grad():
                q = torch.softmax(teacher(xu), dim=1)
            conf, pl = q.max(dim=1)
            logits = model(torch.cat([xl, xu]))
            loss = F.cross_entropy(logits[:nb], yl) + (
                F.cross_entropy(logits[nb:], pl, reduction="none") * (conf >= getattr(cfg.algo_params, "threshold", 0.95))).mean()
        else:
            loss = F.cross_entropy(model(xl), yl)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ssl:
            ema_update(teacher, model, c.ema_decay)
    _sync(device)
    return CLOCK() - t0


CLOCK = time.perf_counter


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--algorithm", default="fixmatch")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a client gets num_cpus=1)")
    ap.add_argument("--clock", choices=("thread", "wall"), default="thread", help="CPU only; CUDA uses wall")
    a = ap.parse_args()
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda asked for but CUDA is not available on this machine", file=sys.stderr)
        sys.exit(2)
    global CLOCK
    if a.clock == "thread" and not a.device.startswith("cuda"):
        # train_client times itself with time.perf_counter; point its module at the thread clock.
        CLOCK = time.thread_time
        fedssl.training.time = types.SimpleNamespace(perf_counter=time.thread_time)
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    cfg = resolve(overrides={"client.algorithm": a.algorithm, "client.local_steps": a.steps})
    splits, shard = client_shard(cfg.data, cfg.run.seed, 0)
    data = client_data(splits.train_x, splits.train_y, shard.labeled, shard.unlabeled)
    kw = (splits.train_x.shape[-1], splits.train_x.shape[1])  # (in_channels, image_size)
    print(f"{a.algorithm} on {cfg.model.name}, {a.steps} steps, batch {cfg.client.batch_size} labeled"
          f" + {cfg.client.batch_size * cfg.client.uratio} unlabeled, device {device},"
          f" {a.threads} thread(s), {a.clock if device.type == 'cpu' else 'wall'} clock,"
          f" {a.reps} interleaved reps (medians)")
    fedssl_round(cfg, data, kw, device, 2)  # warm-up: lazy imports, allocator
    bare_round(cfg, data, kw, device, 2)
    rows: list[tuple[float, float, float, float]] = []
    for r in range(a.reps):
        t = fedssl_round(cfg, data, kw, device, 2 + r)
        rows.append((t["data_s"], t["train_s"], t["total_s"], bare_round(cfg, data, kw, device, a.steps)))
    med = [statistics.median(col) for col in zip(*rows)]
    data_s, train_s, total_s, bare_s = med
    frac = statistics.median(d / (d + t) for d, t, _, _ in rows)
    ratio = statistics.median(tot / b for _, _, tot, b in rows)
    print(f"{'':28}{'median s':>10}{'ms/step':>10}")
    for name, v in [("fedssl data prep", data_s), ("fedssl fwd/bwd/step", train_s),
                    ("fedssl round total", total_s), ("bare loop fwd/bwd/step", bare_s)]:
        print(f"{name:28}{v:10.3f}{1000 * v / a.steps:10.2f}")
    print(f"data prep share of local training: {100 * frac:.1f}%  (target <= 15%)")
    print(f"fedssl round / bare loop: {ratio:.2f}x")


if __name__ == "__main__":
    main()
