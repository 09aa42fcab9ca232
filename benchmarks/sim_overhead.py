"""Where does simulation time go? The same FL workload several ways, from one process.

  (a) plain PyTorch loop: sequential, one thread, FedAvg averaging (the compute floor);
  (a') the same clients split over one process per core, started together: what the
      cores deliver at the time (on a shared machine, less than cores x (a))
  (b) stock Flower 1.42 simulation (Ray backend, num_cpus=1 per client), stock FedAvg
      and a minimal ClientApp doing the same local training
  (p) pfl-research (Apple's `pfl`, the optional `bench` extra) on 1 process and on one
      process per core (torchrun): benchmarks/pfl_arm.py, same model, data, local work
  (c) `fedssl run` with `supervised` (and `fixmatch`), packed (auto clients_per_node)
      and unpacked (clients_per_node=1)

The arms run in turn, `--repeats` times (a, a', p, b, c, a, a', ...), and each row is
the arm's median; ratios are to pfl on one process per core and to (a'), the floor.

Workload: N clients (IID shards of real Fashion-MNIST), R rounds, every client trains
`--steps` SGD steps of batch 32 on the CNN each round. "ideal" = (a) / cores.
Also prints the per-update time breakdown of (c) from its metrics.csv.

    python benchmarks/sim_overhead.py --clients 200,1000 --rounds 6 --steps 1 --repeats 3 --stock-max 0

At N=10000, `federation.fraction_train` 0.02 (`--fraction`) samples 200 clients a round,
the same ones in every run; stock Flower runs only up to `--stock-max` clients.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedssl.config import resolve
from fedssl.data import load_dataset, make_partition
from fedssl.data.augment import normalize, weak
from fedssl.models import build_model
from fedssl.sampling import sample_clients

sys.path.insert(0, str(Path(__file__).parent))
from memory import tree_memory  # noqa: E402

CORES = len(os.sched_getaffinity(0))
#: end to end seconds of the last call (Ray start-up, data, set-up, rounds, shut-down)
WALL: dict[str, float] = {}


def shards(n: int):
    cfg = resolve(overrides={"data.partition": "iid", "data.num_clients": n, "data.labeled_ratio": 1.0})
    s = load_dataset(cfg.data, 0)
    p = make_partition(s.train_y, cfg.data, s.num_classes, 0)
    x = torch.from_numpy(s.train_x.transpose(0, 3, 1, 2).copy())
    y = torch.from_numpy(s.train_y.astype(np.int64))
    return x, y, [torch.from_numpy(np.array(sh.labeled)) for sh in p.shards]


def local_train(model, x, y, idx, steps, gen):
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)
    for _ in range(steps):
        b = idx[torch.randint(len(idx), (32,), generator=gen)]
        loss = torch.nn.functional.cross_entropy(model(normalize(weak(x[b]))), y[b])
        opt.zero_grad()
        loss.backward()
        opt.step()


def sampled(n: int, fraction: float, rnd: int) -> list[int]:
    """The clients fedssl samples in round ``rnd`` (run.seed 0): every run trains them."""
    return sample_clients(n, fraction, 1, 0, rnd)


def plain_loop(n: int, rounds: int, steps: int, fraction: float = 1.0, part: tuple[int, int] = (0, 1),
               barrier=None) -> tuple[float, list[float]]:  # noqa: ANN001
    """The sampled clients trained one after the other; ``part`` (i, k): only every
    k-th from the i-th (one of k processes), starting together at ``barrier``."""
    torch.set_num_threads(1)
    x, y, idxs = shards(n)
    global_model = build_model("cnn", 10)
    local = build_model("cnn", 10)
    gen = torch.Generator().manual_seed(0)
    # Before the clock: torch's first optimizer imports torch._dynamo (about 1 s), a
    # one-off that every Ray worker pays in its round 1 too (see the cold-start floor).
    torch.optim.SGD(local.parameters(), lr=0.1)
    if barrier is not None:
        barrier.wait()
    t0 = time.perf_counter()
    per_round = []
    for rnd in range(1, rounds + 1):
        t_r = time.perf_counter()
        g = global_model.state_dict()
        acc = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in g.items()}
        pids = sampled(n, fraction, rnd)
        for i in pids[part[0]::part[1]]:
            local.load_state_dict(g)
            local_train(local, x, y, idxs[i], steps, gen)
            for k, v in local.state_dict().items():
                acc[k] += v.double() / len(pids)
        global_model.load_state_dict({k: v.float() for k, v in acc.items()})
        per_round.append(time.perf_counter() - t_r)
    return time.perf_counter() - t0, per_round


def _plain_part(args: tuple, barrier, out) -> None:  # noqa: ANN001
    out.put((args[4][0], plain_loop(*args, barrier=barrier)))


def parallel_plain(n: int, rounds: int, steps: int, fraction: float) -> tuple[float, list[float]]:
    """(a) split over ``CORES`` processes started together: what the cores deliver now
    (on a shared machine, less than ``CORES`` times one). Per round: the slowest."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(CORES), ctx.Queue()
    procs = [ctx.Process(target=_plain_part, args=((n, rounds, steps, fraction, (i, CORES)), barrier, out))
             for i in range(CORES)]
    for p in procs:
        p.start()
    results = [out.get()[1] for _ in procs]
    for p in procs:
        p.join()
    per_round = [max(r[1][i] for r in results) for i in range(rounds)]
    return max(r[0] for r in results), per_round


def stock_flower(n: int, rounds: int, steps: int, fraction: float = 1.0) -> tuple[float, list[float]]:
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    client = ClientApp()
    cache: dict = {}

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        if "data" not in cache:
            torch.set_num_threads(1)
            cache["data"] = shards(int(context.node_config["num-partitions"]))
            cache["model"] = build_model("cnn", 10)
        x, y, idxs = cache["data"]
        model = cache["model"]
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        pid = int(context.node_config["partition-id"])
        local_train(model, x, y, idxs[pid], steps, torch.Generator().manual_seed(pid))
        return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()),
                                   "metrics": MetricRecord({"num-examples": len(idxs[pid])})}), reply_to=msg)

    server = ServerApp()
    timing = {}

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        k = len(sampled(n, fraction, 1))
        strategy = FedAvg(fraction_train=fraction, fraction_evaluate=0.0, min_train_nodes=k, min_available_nodes=n)
        starts: list[float] = []
        configure = strategy.configure_train

        def timed_configure(*a, **kw):  # measurement only: stamp each round's start
            starts.append(time.perf_counter())
            return configure(*a, **kw)

        strategy.configure_train = timed_configure
        t0 = time.perf_counter()
        strategy.start(grid=grid, initial_arrays=ArrayRecord(build_model("cnn", 10).state_dict()),
                       num_rounds=rounds)
        timing["t"] = time.perf_counter() - t0
        ends = starts[1:] + [t0 + timing["t"]]
        timing["rounds"] = [e - s for s, e in zip(starts, ends)]

    logging.getLogger("flwr").setLevel(logging.ERROR)
    t_wall = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_simulation(server_app=server, client_app=client, num_supernodes=n,
                       backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                       "init_args": {"logging_level": "ERROR", "num_cpus": CORES}})
    import ray

    ray.shutdown()
    WALL["stock"] = time.perf_counter() - t_wall
    return timing["t"], timing["rounds"]


def fedssl_run(n: int, rounds: int, steps: int, algorithm: str, cpn: int, fraction: float = 1.0
               ) -> tuple[float, list[float], dict[str, float]]:
    from fedssl.simulation import run_experiment

    out = Path(tempfile.mkdtemp(prefix="simbench_"))
    cfg = resolve(overrides={"data.partition": "iid", "data.num_clients": n, "data.labeled_ratio": 1.0
                             if algorithm == "supervised" else 0.05, "client.algorithm": algorithm,
                             "federation.rounds": rounds, "client.local_steps": steps,
                             "federation.clients_per_node": cpn, "run.out_dir": str(out),
                             "federation.fraction_train": fraction,
                             "run.eval_every": rounds, "run.checkpoint_every": 0,
                             "client.uratio": 1})
    t_wall = time.perf_counter()
    with PeakMemory() as mem:
        run_experiment(cfg, quiet=True)
    WALL["fedssl"] = time.perf_counter() - t_wall
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    # The clock covers the rounds only (sample, send, train, validate, aggregate): Ray
    # start-up, dataset loading and the test-set evaluation are excluded, as for (b),
    # whose clock starts when the strategy starts and which evaluates nothing.
    last = rows[-1]
    breakdown = {k: float(last[k]) for k in ("t_deser_s", "t_state_s", "t_data_s", "t_train_s") if last.get(k)}
    breakdown["round_trip_s_per_update"] = float(last["t_round_trip_s"]) / max(1, int(last["clients"]))
    # the server's own work per round (last round), while the workers wait
    breakdown.update({f"server_{k[2:]}_per_round": float(last[k]) for k in ("t_validate_s", "t_aggregate_s")
                      if last.get(k)})
    rounds_s = json.loads((out / "summary.json").read_text())["round_train_s"]
    breakdown["peak_pss_gib"], breakdown["peak_rss_sum_gib"] = mem.pss / 2**30, mem.rss / 2**30
    return sum(rounds_s), rounds_s, breakdown


class PeakMemory:
    """Peak PSS and RSS sums of this process and its descendants (Ray's GCS, raylet and
    workers), sampled every 0.2 s in a thread (benchmarks/memory.py's measure)."""

    def __enter__(self) -> PeakMemory:
        self.pss = self.rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            rss, pss = tree_memory(os.getpid())
            self.rss, self.pss = max(self.rss, rss), max(self.pss, pss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def cold_start_floor(n: int) -> dict[str, float]:
    """What any Ray-based run pays before its first update, measured with bare Ray (no
    Flower): ``ray.init``, then one actor per core that imports torch and fedssl's
    ClientApp, builds the per-actor runtime (dataset, partition of n clients, model)
    and its first optimizer (fedssl's own SGD, as a client round does)."""
    import ray

    cfg = resolve(overrides={"data.partition": "iid", "data.num_clients": n, "data.labeled_ratio": 1.0,
                             "run.out_dir": tempfile.mkdtemp(prefix="simbench_")})
    t0 = time.perf_counter()
    ray.init(num_cpus=CORES, include_dashboard=False, logging_level="ERROR")
    t1 = time.perf_counter()

    @ray.remote(num_cpus=1)
    class Probe:
        def boot(self, cfg) -> tuple[float, float]:  # noqa: ANN001
            t = time.perf_counter()
            import fedssl.client.app  # noqa: F401  (torch, flwr, fedssl)
            from fedssl.client.runtime import ClientRuntime
            from fedssl.optim import SGD

            t_import = time.perf_counter()
            rt = ClientRuntime(cfg, {})
            SGD(rt.model.parameters(), lr=0.1)
            return t_import - t, time.perf_counter() - t_import

    actors = [Probe.remote() for _ in range(CORES)]
    booted = ray.get([a.boot.remote(cfg) for a in actors])
    t2 = time.perf_counter()
    ray.shutdown()
    return {"ray_init_s": t1 - t0, "actors_ready_s": t2 - t1,
            "import_s": max(b[0] for b in booted), "runtime_s": max(b[1] for b in booted)}


def steady(rounds_s: list[float]) -> float:
    """Mean seconds per round after the first (cold-start) round."""
    rest = rounds_s[1:] or rounds_s
    return sum(rest) / len(rest)


def fractions(spec: str) -> dict[int, float]:
    """``"10000=0.02"`` -> {10000: 0.02}: federation.fraction_train per N (1.0 otherwise)."""
    return {int(n): float(f) for n, _, f in (p.partition("=") for p in spec.split(",") if p)}


def pfl_arm(n: int, rounds: int, steps: int, procs: int) -> tuple[float, list[float]]:
    """pfl-research on ``procs`` processes (``benchmarks/pfl_arm.py``; torchrun for more
    than one), same model, data and local work; its end-to-end seconds go to WALL."""
    import subprocess

    script = str(Path(__file__).with_name("pfl_arm.py"))
    launcher = ([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}"] if procs > 1
                else [sys.executable])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    for attempt in (1, 2):  # the 2-process run aborted (SIGABRT) now and then on this machine: one retry
        t_wall = time.perf_counter()
        proc = subprocess.run([*launcher, script, "--clients", str(n), "--rounds", str(rounds), "--steps", str(steps)],
                              capture_output=True, text=True, env=env)
        WALL[f"pfl{procs}"] = time.perf_counter() - t_wall
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode == 0 and lines:
            break
        print(f"  pfl on {procs} processes failed (attempt {attempt}, exit {proc.returncode})", flush=True)
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"pfl_arm.py on {procs} processes failed: {proc.stderr.strip()[-2000:]}")
    out = json.loads(lines[-1])
    return out["total_s"], out["rounds_s"]


def has_pfl() -> bool:
    import importlib.util

    return importlib.util.find_spec("pfl") is not None


def median(values: list[float]) -> float:
    return float(np.median(values))


def report(n: int, f: float, args: argparse.Namespace, floor: dict[str, float], header: str) -> None:
    """Runs every arm at N=n, fraction_train f, ``--repeats`` times in turn (a, a', pfl,
    stock, fedssl, a, a', ...), and prints each arm's medians and their ratios."""
    k = len(sampled(n, f, 1))
    notes = []
    arms: list[tuple[str, Any]] = [
        ("(a) plain PyTorch loop", lambda: plain_loop(n, args.rounds, args.steps, f)),
        (f"(a') (a) in {CORES} processes", lambda: parallel_plain(n, args.rounds, args.steps, f))]
    floor_name = arms[1][0]
    pfl_ref = None
    if args.pfl and f == 1.0:
        for procs in (1, CORES):
            name = f"(p) pfl, {procs} process{'es' if procs > 1 else ''}"
            arms.append((name, lambda procs=procs: pfl_arm(n, args.rounds, args.steps, procs) + (f"pfl{procs}",)))
        pfl_ref = arms[-1][0]
    elif args.pfl:
        notes.append(f"      pfl skipped at N={n}: fraction_train {f} (its cohort would be other clients)")
    if n <= args.stock_max:
        arms.append(("(b) stock Flower FedAvg", lambda: stock_flower(n, args.rounds, args.steps, f) + ("stock",)))
    else:
        notes.append(f"      stock Flower skipped at N={n} (> --stock-max {args.stock_max}: {n} Flower nodes)")
    runs = ([("supervised", 0)] + ([("supervised", 1)] if args.unpacked else [])
            + ([("fixmatch", 0)] if args.fixmatch else []))
    for algo, cpn in runs:
        arms.append((f"(c) fedssl {algo} cpn={'auto' if cpn == 0 else cpn}",
                     lambda algo=algo, cpn=cpn: fedssl_run(n, args.rounds, args.steps, algo, cpn, f)))
    totals: dict[str, list[float]] = {name: [] for name, _ in arms}
    steadies: dict[str, list[float]] = {name: [] for name, _ in arms}
    extra: dict[str, tuple[str, str]] = {}
    for rep in range(args.repeats):
        for name, fn in arms:
            res = fn()
            totals[name].append(res[0])
            steadies[name].append(steady(res[1]))
            if name.startswith("(c)"):
                bd = res[2]
                mem = f"{bd.pop('peak_pss_gib'):.2f}/{bd.pop('peak_rss_sum_gib'):.2f}"
                extra[name] = (mem, f"{WALL['fedssl']:.1f}")
                if rep == args.repeats - 1:
                        notes.append(f"      per update ({name[4:]}): " +
                                 "  ".join(f"{k}={v * 1000:.1f}ms" for k, v in bd.items()))
            elif len(res) > 2:
                extra[name] = ("", f"{WALL[res[2]]:.1f}")
    total = {name: median(v) for name, v in totals.items()}
    stead = {name: median(v) for name, v in steadies.items()}
    ideal, ideal_steady = total[arms[0][0]] / CORES, stead[arms[0][0]] / CORES
    cold = floor["actors_ready_s"]  # worker spawn, imports, runtime, first optimizer
    print(header)
    print(f"{n:>5} {k:>7} {'ideal = (a) / cores':30} {ideal:8.2f} {ideal_steady:9.3f}")

    def ratio(a: float, b: float | None) -> str:
        return f"{a / b:8.2f}x" if b else "        -"

    for name, _ in arms:
        t, st = total[name], stead[name]
        pt, ps = (total[pfl_ref], stead[pfl_ref]) if pfl_ref else (None, None)
        mem, wall = extra.get(name, ("", ""))
        print(f"{n:>5} {k:>7} {name:30} {t:8.2f} {st:9.3f} {ratio(t, pt):>9} {ratio(st, ps):>9} "
              f"{ratio(st, stead[floor_name]):>9} {mem:>12} {wall:>12}")
        if name.startswith("(c)"):
            notes.append(f"      {name[4:]}: total - cold-start floor = {t - cold:.2f} s = "
                         f"{(t - cold) / ideal:.2f}x ideal")
    notes.append(f"      medians of {args.repeats} alternated repeats; loadavg after N={n}: "
                 f"{open('/proc/loadavg').read().split()[:3]}")
    print("\n".join(notes), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", default="50,200,1000,10000")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--fraction", default="10000=0.02",
                    help="federation.fraction_train per N, e.g. '10000=0.02' (1.0 for the others)")
    ap.add_argument("--stock-max", type=int, default=500,
                    help="run stock Flower only for N <= this (it needs N Flower nodes)")
    ap.add_argument("--unpacked", action="store_true", help="also time fedssl with clients_per_node=1")
    ap.add_argument("--fixmatch", action="store_true", help="also time fixmatch")
    ap.add_argument("--repeats", type=int, default=1, help="alternated repeats of every arm (medians printed)")
    ap.add_argument("--no-pfl", dest="pfl", action="store_false",
                    help="leave out pfl-research (benchmarks/pfl_arm.py; installed by the 'bench' extra)")
    args = ap.parse_args()
    if args.pfl and not has_pfl():
        sys.exit("error: pfl is not installed (pip install 'fedssl[bench]'), or pass --no-pfl")
    frac = fractions(args.fraction)
    print(f"cores={CORES}  rounds={args.rounds}  steps/client/round={args.steps}  batch=32  model=cnn  "
          f"loadavg at start: {open('/proc/loadavg').read().split()[:3]}")
    print("total = all rounds (round 1 includes each worker's cold start: imports, dataset, model);\n"
          "steady = mean seconds per round after round 1 (no evaluation in any of them);\n"
          "peak memory = PSS sum / RSS sum of the fedssl run's process tree; end-to-end = the whole\n"
          "call (Ray start-up, data loading, set-up, rounds, shut-down)")
    header = (f"{'N':>5} {'sampled':>7} {'run':30} {'total s':>8} {'steady s':>9} {'total/pfl':>9} "
              f"{'steady/pfl':>9} {'st/floor':>9} {'PSS/RSS GiB':>12} {'end-to-end s':>12}")
    floor = cold_start_floor(min(int(v) for v in args.clients.split(",")))
    print(f"cold-start floor, bare Ray without Flower: ray.init {floor['ray_init_s']:.2f} s (before any "
          f"clock), then {CORES} actors ready in {floor['actors_ready_s']:.2f} s (inside each actor: imports "
          f"{floor['import_s']:.2f} s + runtime (dataset, partition, model, first optimizer) "
          f"{floor['runtime_s']:.2f} s)")
    for n in [int(v) for v in args.clients.split(",")]:
        report(n, frac.get(n, 1.0), args, floor, header)

if __name__ == "__main__":
    main()
