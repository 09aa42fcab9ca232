"""Peak memory against the number of clients: is per-client state bounded?

Runs `fedssl run` (fixmatch, EMA teacher per client, Dirichlet 0.5 on Fashion-MNIST,
`fraction_train` 0.05, 3 rounds) for each N as a child process and samples the
memory of its whole process tree (driver, Ray's GCS/raylet and workers) every 0.2 s:
the PSS sum (real footprint) and the RSS sum (shared pages counted once per process). Prints a table, writes OUT/memory.csv and OUT/memory.png.

If per-client state lived in memory, peak RSS would grow by about N x model size
(the "N x model" column); it lives in the run's client state store on disk instead,
and only the clients trained in a round are loaded.

    python benchmarks/memory.py --clients 100,500,1000 --out runs/bench_memory
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
from pathlib import Path

from fedssl.deploy import descendants
from fedssl.models import build_model
from fedssl.state import ClientStateStore


def tree_memory(root: int) -> tuple[int, int]:
    """(RSS, PSS) bytes summed over ``root`` and its descendants. RSS counts pages
    shared between processes (torch's libraries, mapped by every worker) once per
    process; PSS splits them, so the PSS sum is the tree's real footprint."""
    rss = pss = 0
    for pid in [root, *descendants(root)]:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
        except OSError:
            continue
    return rss, pss


def run(n: int, rounds: int, out: Path) -> tuple[float, float, float, int]:
    cmd = [sys.executable, "-m", "fedssl.cli", "run", "--quiet", "--overwrite", "--out", str(out),
           "--set", "client.algorithm='fixmatch'", "--set", f"data.num_clients={n}",
           "--set", "federation.fraction_train=0.05", "--set", f"federation.rounds={rounds}",
           "--set", "run.eval_every=3"]
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak_rss = peak_pss = 0
    while proc.poll() is None:
        rss, pss = tree_memory(proc.pid)
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        time.sleep(0.2)
    if proc.returncode:
        raise SystemExit(f"N={n} failed ({proc.returncode}): {proc.stderr.read()[-2000:]}")
    states = len(ClientStateStore(out / "client_state").files())
    return time.time() - t0, peak_rss / 2**30, peak_pss / 2**30, states


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", default="100,500,1000")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="runs/bench_memory")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model_mb = sum(p.numel() * p.element_size() for p in build_model("cnn", 10).state_dict().values()) / 2**20
    print(f"model (cnn) = {model_mb:.2f} MiB; teacher state per client = one model")
    print(f"{'N':>6} {'wall s':>8} {'peak PSS GiB':>13} {'peak RSS GiB':>13} {'N x model GiB':>14} "
          f"{'state files':>12}")
    results = []
    for n in [int(v) for v in args.clients.split(",")]:
        wall, rss, pss, states = run(n, args.rounds, out / f"n{n}")
        results.append({"clients": n, "wall_s": round(wall, 1), "peak_pss_gib": round(pss, 3),
                        "peak_rss_gib": round(rss, 3), "n_x_model_gib": round(n * model_mb / 1024, 3),
                        "state_files": states})
        print(f"{n:>6} {wall:8.1f} {pss:13.2f} {rss:13.2f} {n * model_mb / 1024:14.3f} {states:>12}", flush=True)
    with open(out / "memory.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(results[0]))
        w.writeheader()
        w.writerows(results)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ns = [r["clients"] for r in results]
    ax.plot(ns, [r["peak_pss_gib"] for r in results], "o-", label="peak PSS, process tree")
    ax.plot(ns, [r["peak_rss_gib"] for r in results], "s:", label="peak RSS sum (shared pages counted per process)")
    base = results[0]["peak_pss_gib"]
    ax.plot(ns, [base + (n - ns[0]) * model_mb / 1024 * 3 for n in ns], "--",
            label="if state grew by N x (teacher+student+momentum)")
    ax.axhline(4, color="red", lw=0.8, label="4 GiB budget")
    ax.set_xlabel("clients N")
    ax.set_ylabel("GiB")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "memory.png", dpi=120)
    print(f"wrote {out / 'memory.csv'} and {out / 'memory.png'}")


if __name__ == "__main__":
    main()
