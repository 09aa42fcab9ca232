"""Summarise open-world robustness bench directories (benchmarks/grids/openworld_robustness*.toml).

For every split (seen classes, clients, globally unseen) and method: mean +- std over
seeds of the final all-class accuracy, unseen accuracy under the all-sample matching
(``acc_unseen_strict``), discovered unseen classes and seen accuracy, then the ORCA
protocol's unseen / globally-unseen accuracy (unseen-only matching, which credits an
unseen class absorbed into a seen output); each unseen class's absorption
(``absorbed_<k>``: share predicted as a seen output), seed by seed; the per-class
accuracy of each globally unseen class, seed by seed; the mean accuracy of every
class over the runs where it is seen; where the seen classes' errors go (into another
seen output, or into an unseen one: the share a method takes from the seen classes
for its novel ones); and the *collapses*: a
(split, seed) whose FedoSSL final model leaves a globally unseen class below 5 %
while FedAvg + ORCA learns it above 50 %. Then the seen-accuracy trajectory (at the
end of the clients' warm start, its lowest point after it, final) and the grand mean
over splits and seeds.

    python benchmarks/openworld_robustness.py runs/ow_small [more bench dirs ...] [--methods a,b]

The last block compares every method with FedAvg + ORCA split by split, on the
(split, seed) pairs both finished, means over seeds: ``all``, ``unseen (strict)`` and
``discovered`` at least ORCA's, ``seen`` within 1 point; then the grand ``all`` gap.

A run measured before ``acc_unseen_strict`` existed is re-scored from its final
checkpoint (``run.checkpoint_every`` = its rounds) into ``rescored.json`` beside it;
without one its strict columns stay empty.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

METRICS = ("acc_all", "acc_unseen_strict", "discovered", "acc_seen", "acc_unseen", "acc_global_unseen")
HEADER = ("all", "unseen (strict)", "discovered", "seen", "ORCA protocol: unseen", "globally unseen")


# FedoSSL keys whose value, when not the reference's, names a variant: (section, key,
# the reference's value). Names stay stable when a default changes.
VARIANT_KEYS = (("client", "pseudo_label_guard", "none"), ("client", "pseudo_label_slots", "all"),
                ("client", "pseudo_label_round", 0), ("client", "lambda_suppress", 1.0),
                ("server", "fedossl_clustering", "sgd"), ("server", "fedossl_init", "random"),
                ("server", "fedossl_seen_slots", "centroid"), ("server", "fedossl_gates", "after_pretrain"),
                ("server", "fedossl_rampup", 0), ("client", "local_centroids", 20),
                ("client", "slot_mapping", "hungarian"), ("client", "memory", "reembed"),
                ("client", "lambda_u", 1.0), ("client", "warmup_rounds", 0), ("client", "lambda_cluster", 0.5))
# the value a key had in runs made before it existed
BEFORE_KEY = {"fedossl_gates": "run"}


def method_of(cfg: dict) -> str:
    s, c = cfg["server"], cfg["client"]
    name = f"{s['strategy']}+{c['algorithm']}"
    if c["algorithm"] == "fedossl":
        for section, key, default in VARIANT_KEYS:
            # an algorithm's own keys sit in its section ([client.fedossl]); older runs: flat
            own = cfg[section].get(c["algorithm"], {}) if section == "client" else {}
            value = own.get(key, cfg[section].get(key, BEFORE_KEY.get(key, default)))
            if value != default:
                name += f"+{key}={value}" if not isinstance(value, str) else f"+{value}"
    return name


def load(dirs: list[Path]) -> list[dict]:
    runs = []
    for d in dirs:
        for path in sorted(d.glob("runs/*/summary.json")):
            s = json.loads(path.read_text())
            if s.get("status") not in ("ok", "diverged"):
                continue
            if "acc_unseen_strict" not in s["final"]:
                s = rescore(path.parent, s)
            cfg = s["config"]
            split = (cfg["data"]["seen_classes"], cfg["data"]["num_clients"], cfg["data"]["globally_unseen"])
            runs.append({"split": split, "seed": cfg["run"]["seed"], "method": method_of(cfg),
                         "seen_curve": seen_curve(path.parent / "metrics.csv"),
                         "warm": cfg["client"].get("pretrain_rounds", 0),
                         "gu": s.get("global_unseen_classes") or [],
                         "pc": {int(k): v for k, v in (s.get("per_class_accuracy") or {}).items()},
                         "absorbed": {int(k.split("_")[1]): v for k, v in s["final"].items()
                                      if k.startswith("absorbed_")},
                         "leak": seen_leak(s.get("confusion_matrix"), cfg["data"]["seen_classes"]),
                         **{m: s["final"].get(m) for m in METRICS}})
    return runs


def rescore(run_dir: Path, summary: dict) -> dict:
    """``summary`` with its final metrics and confusion matrix recomputed by the current
    evaluation from the run's checkpoint, if that holds the last round (cached in
    ``rescored.json``); unchanged otherwise."""
    cached = run_dir / "rescored.json"
    if cached.exists():
        return json.loads(cached.read_text())
    import torch

    from fedssl.config import ConfigError, resolve
    from fedssl.data.augment import normalize
    from fedssl.metrics import confusion_matrix, evaluate_logits, predict
    from fedssl.models import build_model
    from fedssl.runlog import load_checkpoint, write_json
    from fedssl.server.loop import load_test_split

    ckpt = load_checkpoint(run_dir)
    if ckpt is None or ckpt["round"] != summary.get("rounds_completed"):
        return summary
    try:
        cfg = resolve(str(run_dir / "config.toml"))
    except ConfigError as e:  # a config with keys this fedssl does not read
        print(f"warning: {run_dir} not re-scored: {e}", file=sys.stderr)
        return summary
    x, y = load_test_split(cfg)
    model = build_model(cfg.model.name, cfg.num_classes, in_channels=x.shape[-1], image_size=x.shape[1],
                        cosine_head=cfg.algorithm_class.open_world)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in ckpt["arrays"].items()})
    y_pred, logits = predict(model, normalize(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())))
    final = evaluate_logits(logits, y, cfg.num_classes, cfg.num_seen, local_unseen=summary["local_unseen_classes"],
                            global_unseen=summary["global_unseen_classes"])
    summary = {**summary, "final": {**summary["final"], **final},
               "confusion_matrix": confusion_matrix(y, y_pred, cfg.num_classes, cfg.num_seen)}
    write_json(cached, summary)
    return summary


def seen_leak(cm: dict | None, num_seen: int) -> tuple[float, float] | None:
    """Shares of the seen classes' test samples predicted as another seen class's
    output and as an unseen class's output (from the all-sample confusion matrix),
    or None without one."""
    if not cm:
        return None
    seen = cm["counts"][:num_seen]
    total = sum(sum(row) for row in seen)
    if not total:
        return None
    right = sum(row[k] for k, row in enumerate(seen))
    to_unseen = sum(sum(row[num_seen:]) for row in seen)
    return (total - right - to_unseen) / total, to_unseen / total


def seen_curve(path: Path) -> dict[int, float]:
    """Round -> test accuracy on seen classes, from a run's metrics.csv."""
    if not path.exists():
        return {}
    with path.open() as f:
        return {int(row["round"]): float(row["acc_seen"]) for row in csv.DictReader(f)
                if row.get("acc_seen") not in (None, "")}


def fmt(vals: list[float], scale: float = 100) -> str:
    vals = [v for v in vals if v is not None]
    if not vals:
        return "      -      "
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{scale * statistics.fmean(vals):5.1f} +-{scale * sd:4.1f}"


def row_cells(rs: list[dict]) -> str:
    return " | ".join(fmt([r[k] for r in rs], 1 if k == "discovered" else 100) for k in METRICS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="+", type=Path)
    ap.add_argument("--methods", help="comma-separated method names to keep (as printed); default: all")
    args = ap.parse_args()
    runs = load(args.dirs)
    if args.methods:
        keep = set(args.methods.split(","))
        runs = [r for r in runs if r["method"] in keep]
        if not runs:
            print(f"error: no finished run of {', '.join(sorted(keep))} in {', '.join(map(str, args.dirs))}",
                  file=sys.stderr)
            raise SystemExit(2)
    methods = sorted({r["method"] for r in runs})
    by = defaultdict(list)
    for r in runs:
        by[(r["split"], r["method"])].append(r)
    print("split (seen, clients, globally unseen) | method | n | " + " | ".join(HEADER))
    for split in sorted({r["split"] for r in runs}):
        for m in methods:
            rs = by.get((split, m), [])
            if rs:
                print(f"{split} | {m:24} | {len(rs)} | {row_cells(rs)}")
    print("\nabsorbed: share (%) of each unseen class predicted as a seen output, seed by seed")
    for split in sorted({r["split"] for r in runs}):
        for m in methods:
            for r in sorted(by.get((split, m), []), key=lambda r: r["seed"]):
                shares = " ".join(f"c{k}={100 * v:5.1f}" if v is not None else f"c{k}=    -"
                                  for k, v in sorted(r["absorbed"].items()))
                print(f"{split} | {m:24} | seed {r['seed']} | {shares}")
    print("\nper-class accuracy of globally unseen classes (%), seed by seed")
    for split in sorted({r["split"] for r in runs}):
        for m in methods:
            for r in sorted(by.get((split, m), []), key=lambda r: r["seed"]):
                cells = " ".join(f"c{k}={100 * r['pc'].get(k, float('nan')):5.1f}" for k in r["gu"])
                print(f"{split} | {m:24} | seed {r['seed']} | {cells}")
    print("\ncollapses: globally unseen class < 5 % under the method while FedAvg+ORCA has > 50 %")
    orca = {(r["split"], r["seed"]): r for r in runs if r["method"] == "fedavg+orca"}
    for m in [m for m in methods if "fedossl" in m]:
        cases = [(r["split"], r["seed"], k, r["pc"][k], orca[(r["split"], r["seed"])]["pc"][k])
                 for r in runs if r["method"] == m and (r["split"], r["seed"]) in orca
                 for k in r["gu"] if r["pc"].get(k, 1) < 0.05 and orca[(r["split"], r["seed"])]["pc"].get(k, 0) > 0.5]
        print(f"{m:24}: {len(cases)} " + "; ".join(f"{s} seed {sd} class {k}: {100 * a:.1f} vs ORCA {100 * b:.1f}"
                                                   for s, sd, k, a, b in cases))
    print("\nseen classes: accuracy of class k (%) averaged over the (split, seed) pairs where k is seen")
    print("method                   | " + " ".join(f"  c{k}" for k in range(10)))
    for m in methods:
        rs = [r for r in runs if r["method"] == m]
        cells = []
        for k in range(10):
            vals = [r["pc"][k] for r in rs if k < r["split"][0] and k in r["pc"]]
            cells.append(f"{100 * statistics.fmean(vals):4.0f}" if vals else "   -")
        print(f"{m:24} | " + " ".join(cells))
    print("\nwhere seen test samples go wrong (%): into another seen output / into an unseen output")
    for m in methods:
        leaks = [r["leak"] for r in runs if r["method"] == m and r["leak"] is not None]
        if leaks:
            print(f"{m:24} | n={len(leaks)} | seen -> seen {100 * statistics.fmean(a for a, _ in leaks):5.1f} | "
                  f"seen -> unseen {100 * statistics.fmean(b for _, b in leaks):5.1f}")
    print("\nseen accuracy (%): at the end of the warm start, lowest after it (mean round), final")
    for m in methods:
        rows = [(r["seen_curve"][r["warm"]], *min((v, k) for k, v in r["seen_curve"].items() if k > r["warm"]),
                 r["seen_curve"][max(r["seen_curve"])])
                for r in runs if r["method"] == m and r["warm"] in r["seen_curve"] and max(r["seen_curve"]) > r["warm"]]
        if rows:
            warm, low, at, final = (statistics.fmean(c) for c in zip(*rows))
            print(f"{m:24} | n={len(rows)} | warm start {100 * warm:5.1f} | lowest {100 * low:5.1f} "
                  f"(round {at:4.1f}) | final {100 * final:5.1f}")
    print_against_orca(runs, methods)
    print("\ngrand mean over splits and seeds (only (split, seed) pairs every method finished)")
    done = set.intersection(*[{(r["split"], r["seed"]) for r in runs if r["method"] == m} for m in methods])
    for m in methods:
        rs = [r for r in runs if r["method"] == m and (r["split"], r["seed"]) in done]
        print(f"{m:24} | n={len(rs)} | {row_cells(rs)}")


def against_orca(mine: list[dict], orca: list[dict]) -> dict[str, float]:
    """Means over the seeds of both lists (paired): method minus ORCA, in points for
    accuracies, classes for ``discovered``."""
    def mean(rs: list[dict], k: str) -> float:
        return statistics.fmean(r[k] or 0.0 for r in rs)
    return {k: (1 if k == "discovered" else 100) * (mean(mine, k) - mean(orca, k))
            for k in ("acc_all", "acc_unseen_strict", "discovered", "acc_seen")}


def seen_errors_delta(mine: list[dict], orca: list[dict]) -> str:
    """Where the seen-accuracy difference comes from, in points, method minus ORCA:
    more seen samples filed under another seen output, and under an unseen one."""
    pairs = [(a["leak"], b["leak"]) for a, b in zip(mine, orca) if a["leak"] and b["leak"]]
    if not pairs:
        return ""
    to_seen = statistics.fmean(100 * (a[0] - b[0]) for a, b in pairs)
    to_unseen = statistics.fmean(100 * (a[1] - b[1]) for a, b in pairs)
    return f"; errors seen -> seen {to_seen:+.1f}, seen -> unseen {to_unseen:+.1f}"


def paired_se(mine: list[dict], orca: list[dict], key: str) -> float:
    """Standard error (points) of the mean paired difference: how far seed noise alone
    moves a split's mean; 0 with one seed."""
    diffs = [100 * ((a[key] or 0.0) - (b[key] or 0.0)) for a, b in zip(mine, orca)]
    return statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else 0.0


def print_against_orca(runs: list[dict], methods: list[str]) -> None:
    """Split by split: does the method match or beat FedAvg + ORCA on the all-sample
    columns, with seen accuracy within 1 point?"""
    base = "fedavg+orca"
    orca = {(r["split"], r["seed"]): r for r in runs if r["method"] == base}
    print(f"\nagainst {base}, split by split (paired seeds; points, discovered in classes); "
          "pass = all, unseen (strict), discovered >= ORCA's and seen within 1 point")
    for m in [m for m in methods if m != base and "fedossl" in m]:
        passed, total, gaps = 0, 0, []
        for split in sorted({r["split"] for r in runs}):
            mine = sorted((r for r in runs if r["method"] == m and r["split"] == split
                           and (split, r["seed"]) in orca), key=lambda r: r["seed"])
            if not mine:
                continue
            theirs = [orca[(split, r["seed"])] for r in mine]
            d = against_orca(mine, theirs)
            ok = d["acc_all"] >= 0 and d["acc_unseen_strict"] >= 0 and d["discovered"] >= 0 and d["acc_seen"] >= -1
            passed, total = passed + ok, total + 1
            gaps.extend(mine)
            se = paired_se(mine, theirs, "acc_seen")
            print(f"{m:24} | {split} | seeds {len(mine)} | all {d['acc_all']:+5.1f} | strict "
                  f"{d['acc_unseen_strict']:+5.1f} | discovered {d['discovered']:+4.2f} | seen {d['acc_seen']:+5.1f} "
                  f"(paired s.e. {se:3.1f}{seen_errors_delta(mine, theirs)}) | {'pass' if ok else 'FAIL'}")
        if gaps:
            d = against_orca(gaps, [orca[(r["split"], r["seed"])] for r in gaps])
            print(f"{m:24} | {passed}/{total} splits pass | over all {len(gaps)} pairs: all {d['acc_all']:+.1f}, "
                  f"strict {d['acc_unseen_strict']:+.1f}, discovered {d['discovered']:+.2f}, seen {d['acc_seen']:+.1f}")


if __name__ == "__main__":
    main()
