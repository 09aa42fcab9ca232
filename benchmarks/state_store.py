"""Per-client state look-up against the number of clients whose state is on disk.

Each sampled client of a stateful algorithm (an EMA teacher, FreeMatch's thresholds)
loads its state before training and saves it after. This times one load + save of a
small state for 100 clients spread over the directory, with N clients' files already
there (two versions each, as a checkpointed run keeps), and prints the time per client
and its ratio to the smallest N: a look-up that does not grow with N stays near 1.00x.

    PYTHONPATH=. python benchmarks/state_store.py --clients 100,1000,3000
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from fedssl.state import ClientStateStore


def per_client_ms(n: int, probes: int = 100, repeats: int = 3) -> float:
    state = {"teacher.w": torch.zeros(1000)}
    with tempfile.TemporaryDirectory() as d:
        store = ClientStateStore(d)
        for pid in range(n):
            store.save(pid, "run", 1, state)
            store.save(pid, "run", 2, state, keep_round=1)
        pids = list(range(0, n, max(1, n // probes)))
        best = float("inf")
        for rep in range(repeats):
            t0 = time.perf_counter()
            for pid in pids:
                store.load(pid, "run", before_round=3 + rep)
                store.save(pid, "run", 3 + rep, state, keep_round=1)
            best = min(best, (time.perf_counter() - t0) / len(pids))
    return best * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", default="100,1000,3000", help="comma-separated N")
    args = ap.parse_args()
    ns = [int(n) for n in args.clients.split(",")]
    print(f"{'N':>6} {'load+save ms/client':>20} {'vs N=' + str(ns[0]):>10}")
    ref = None
    for n in ns:
        ms = per_client_ms(n)
        ref = ref or ms
        print(f"{n:>6} {ms:>20.3f} {ms / ref:>9.2f}x")


if __name__ == "__main__":
    main()
