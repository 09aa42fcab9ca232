"""Every closed-world SSL algorithm at its own defaults, in both label settings, against
a supervised reference trained to its plateau and a centralized SSL reference (issue 26,
part 4).

Runs `fedssl bench` grids (resumable: finished cells are not rerun), then tabulates:

  server   benchmarks/grids/defaults_server.toml: labels at the server (10 per class),
           the first run's split and budget; reference = server-only (its warm-up
           already reaches its plateau)
  client   benchmarks/grids/defaults_client.toml: 2 % labels at the clients; the
           reference is `supervised` at the most steps that still help: it runs at its
           defaults (at least 50 steps a round), 10, 50 and 200 local steps a round,
           and the best of them is the reference
  cause    benchmarks/grids/defaults_client_cause.toml (not run by default): the
           client setting with one cause changed at a time (IID shards; 30 rounds),
           supervised against FixMatch at 10 and 50 steps, one table per split
  client_1pct   benchmarks/grids/defaults_client_1pct.toml (not run by default): the
           client setting at 1 % labels, FixMatch against supervised, federated and
           centralized

For each algorithm: final accuracy (mean ± std over seeds), the gain over the reference
paired by seed (a seed fixes the partition and the initial model), the gap to the
centralized reference, whether it clears +3 points, and the number of client updates
the server rejected (non-finite or over the norm bound: a defect of the defaults), and
how much of the unlabeled data trained and how right its pseudo-labels were (the first
place to look for why an algorithm gains little).

    python benchmarks/defaults.py --out runs/defaults [--settings server,client,cause] [--report-only]

Writes OUT/defaults.md (the settings' tables) beside their bench directories.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
GRIDS = {"server": HERE / "grids" / "defaults_server.toml", "client": HERE / "grids" / "defaults_client.toml",
         "cause": HERE / "grids" / "defaults_client_cause.toml",
         "client_1pct": HERE / "grids" / "defaults_client_1pct.toml"}
TITLES = {"server": "Labels at the server: 10 per class, 100 clients (Dirichlet 0.3), 10 per round, 10 rounds",
          "client": "Labels at the clients: 2 %, 100 clients (Dirichlet 0.3), 10 per round, 10 rounds",
          "cause": "Labels at the clients, one cause changed at a time",
          "client_1pct": "Labels at the clients: 1 %, 100 clients (Dirichlet 0.3), 10 per round, 10 rounds"}
# the cause grid changes the split or the budget: one table per (partition, rounds)
GROUP_BY = {"cause": ["data.partition", "federation.rounds"]}
GOAL = 3.0  # points over the reference (the criterion)


def method_of(row) -> str:
    if int(row.get("data.num_clients", 0)) == 1:  # central FixMatch, or its supervised counterpart
        return "central supervised" if row["client.algorithm"] == "supervised" else "central"
    if int(row.get("client.local_steps", 0)) > 0:
        return f"{row['client.algorithm']} ({int(row['client.local_steps'])} steps)"
    return row["client.algorithm"]


def run_stats(bench: Path, cells) -> tuple[int, str, str]:
    """Over the method's runs: client updates the server rejected, and the mean over
    rounds and seeds of the share of unlabeled samples that trained (``train_selected``
    where the algorithm draws its batches from a selected pool, else ``train_mask``) and
    of the accuracy of those pseudo-labels against the hidden labels (``train_pl_acc``)."""
    import pandas as pd

    rej, used, acc = 0, [], []
    for cell in cells:
        m = pd.read_csv(bench / "runs" / cell / "metrics.csv")
        rej += int(pd.to_numeric(m.get("rejected_updates", 0), errors="coerce").fillna(0).sum())
        share = "train_selected" if "train_selected" in m else "train_mask"
        for col, into in ((share, used), ("train_pl_acc", acc)):
            if col in m and m[col].notna().any():
                into.append(float(m[col].mean()))
    pct = lambda xs: f"{100 * statistics.mean(xs):.0f}" if xs else ""  # noqa: E731
    return rej, pct(used), pct(acc)


def table(setting: str, bench: Path) -> list[str]:
    import pandas as pd

    res = pd.read_csv(bench / "results.csv")
    res = res[res["status"] == "ok"].copy()
    res["method"] = res.apply(method_of, axis=1)
    if setting not in GROUP_BY:
        return method_table(TITLES[setting], bench, res)
    lines = []
    for key, part in res.groupby(GROUP_BY[setting], sort=False):
        split = ", ".join(f"{k} = {v}" for k, v in zip(GROUP_BY[setting], key))
        lines += method_table(f"{TITLES[setting]}: {split}", bench, part)
    return lines


def method_table(title: str, bench: Path, res) -> list[str]:
    acc = {m: g.set_index("run.seed")["acc_all"] * 100 for m, g in res.groupby("method", sort=False)}
    sup = {m: v for m, v in acc.items() if m.startswith("supervised")}
    ref_name = max(sup, key=lambda m: sup[m].mean()) if sup else None
    central = acc.get("central")
    lines = [f"### {title}", "",
             f"Reference: `{ref_name}` (the best supervised arm); central: one client holding all the data.", "",
             "| method | seeds | final acc % (mean ± std) | gain over reference, paired (per seed) | "
             f">= +{GOAL:.0f} | gap to central | rejected updates | unlabeled share trained % | its pseudo-label acc % |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m, v in acc.items():
        std = statistics.pstdev(v) if len(v) > 1 else 0.0
        cells = res[res["method"] == m]["cell"]
        rej, used, pl_acc = run_stats(bench, cells)
        if ref_name is None or m == ref_name:
            gain, ok = "reference", ""
        else:
            d = (v - acc[ref_name]).dropna()
            gain = f"{d.mean():+.1f} ({' / '.join(f'{x:+.1f}' for x in d)})"
            ok = "" if m.startswith(("supervised", "central")) else ("yes" if d.mean() >= GOAL else "**no**")
        gap = f"{central.mean() - v.mean():+.1f}" if central is not None and m != "central" else ""
        lines.append(f"| {m} | {len(v)} | {v.mean():.1f} ± {std:.1f} | {gain} | {ok} | {gap} | {rej} | {used} | {pl_acc} |")
    return lines + [""]


def fail(msg: str) -> None:
    """Bad input or a failed grid: one line, exit status 2."""
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/defaults")
    ap.add_argument("--settings", default="server,client", help="server,client,cause,client_1pct")
    ap.add_argument("--report-only", action="store_true", help="tabulate finished cells, start none")
    args = ap.parse_args()
    out = Path(args.out)
    settings = args.settings.split(",")
    for s in settings:
        if s not in GRIDS:
            fail(f"unknown setting {s!r} ({', '.join(GRIDS)})")
    lines = ["# Every algorithm at its defaults", ""]
    for s in settings:
        bench = out / s
        if not args.report_only:
            proc = subprocess.run([sys.executable, "-m", "fedssl.cli", "bench", "--grid", str(GRIDS[s]),
                                   "--out", str(bench)])
            if proc.returncode != 0:
                fail(f"the {s} grid stopped with exit status {proc.returncode}; its finished cells are kept")
        if (bench / "results.csv").exists():
            lines += table(s, bench)
    out.mkdir(parents=True, exist_ok=True)
    (out / "defaults.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
