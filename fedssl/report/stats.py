"""Mean ± std over seeds per configuration, and how the numbers are shown.

A configuration is one combination of the varied keys other than ``run.seed``; its
statistics are a pandas ``groupby().agg`` over the finished cells of the results table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fedssl.report.layout import fmt_value
from fedssl.report.model import ACC, SEED_KEY, Bench, Cell

SUMMARY_COLS = ACC[:2] + ["discovered"] + ACC[2:] + ["best_acc_all", "loss", "wall_s"]
LOWER_IS_BETTER = {"loss", "wall_s"}

Stats = dict[tuple[str, str], tuple[float, float, int]]  # (group label, column) -> (mean, std, n)


def config_label(bench: Bench, params: dict[str, Any]) -> str:
    if not bench.group_keys:
        return "all"
    return " · ".join(fmt_value(params.get(k)) for k in bench.group_keys)


@dataclass
class Group:
    label: str
    params: dict[str, Any]
    cells: list[Cell]

    @property
    def done(self) -> list[Cell]:
        return [c for c in self.cells if c.finished]


def groups_of(bench: Bench) -> list[Group]:
    """Configurations (the non-seed varied keys), in grid order."""
    out: dict[str, Group] = {}
    for c in bench.cells:
        label = config_label(bench, c.params)
        g = out.setdefault(label, Group(label, {k: c.params.get(k) for k in bench.group_keys}, []))
        g.cells.append(c)
    return list(out.values())


def mean_std_n(values: list[float]) -> tuple[float, float, int]:
    """Mean, sample std (NaN below two values) and count of the non-NaN ``values``."""
    import pandas as pd

    s = pd.Series(values, dtype="float64").dropna()
    if s.empty:
        return math.nan, math.nan, 0
    return float(s.mean()), float(s.std()) if len(s) > 1 else math.nan, len(s)


def summary_stats(bench: Bench, results) -> tuple[list[Group], list[str], Stats]:
    """Groups, the columns that have a value somewhere, and their (mean, std, n)."""
    import pandas as pd

    groups = groups_of(bench)
    label = {c.id: g.label for g in groups for c in g.cells}
    finished = {c.id for c in bench.cells if c.finished}
    done = results[results["cell"].isin(finished)]
    values = done[SUMMARY_COLS].apply(pd.to_numeric, errors="coerce").assign(group=done["cell"].map(label))
    agg = values.groupby("group", sort=False).agg(["mean", "std", "count"])
    stats: Stats = {}
    for g in groups:
        for col in SUMMARY_COLS:
            if g.label in agg.index and agg.loc[g.label, (col, "count")] > 0:
                mean, std, n = (agg.loc[g.label, (col, s)] for s in ("mean", "std", "count"))
                stats[g.label, col] = (float(mean), float(std) if n > 1 else math.nan, int(n))
            else:
                stats[g.label, col] = (math.nan, math.nan, 0)
    cols = [c for c in SUMMARY_COLS if any(stats[g.label, c][2] for g in groups)]
    return groups, cols, stats


def best(groups: list[Group], col: str, stats: Stats) -> float:
    """The best group mean of ``col`` (lowest for loss and time)."""
    means = [stats[g.label, col][0] for g in groups if not math.isnan(stats[g.label, col][0])]
    if not means:
        return math.nan
    return min(means) if col in LOWER_IS_BETTER else max(means)


def _scale(col: str) -> tuple[float, int]:
    if col.startswith("acc") or col == "best_acc_all":
        return 100.0, 2
    if col in ("wall_s", "discovered"):
        return 1.0, 1
    return 1.0, 4


def fmt_stat(col: str, mean: float, std: float) -> str:
    """``"81.23 ± 0.45"`` (accuracies in %), ``"–"`` when there is no value."""
    if math.isnan(mean):
        return "–"
    scale, digits = _scale(col)
    text = f"{mean * scale:.{digits}f}"
    if not math.isnan(std):
        text += f" ± {std * scale:.{digits}f}"
    return text


def is_best(col: str, mean: float, best_mean: float) -> bool:
    """Best at the shown precision (ties are all bold)."""
    if math.isnan(mean) or math.isnan(best_mean):
        return False
    return fmt_stat(col, mean, math.nan) == fmt_stat(col, best_mean, math.nan)


def status_counts(bench: Bench) -> dict[str, int]:
    out = {s: 0 for s in ("ok", "diverged", "failed", "interrupted", "pending")}
    for c in bench.cells:
        out[c.status] = out.get(c.status, 0) + 1
    return out


def summary_cells(bench: Bench, results) -> tuple[list[str], list[tuple[list[str], list[tuple[str, bool]]]]]:
    """The summary table shared by markdown, HTML and the terminal: header, and per group
    (key values + "n done/cells", [(formatted statistic, is the column's best)])."""
    groups, cols, stats = summary_stats(bench, results)
    top = {col: best(groups, col, stats) for col in cols}
    rows = []
    for g in groups:
        keys = [fmt_value(g.params[k]) for k in bench.group_keys] or ["all"]
        vals = []
        for col in cols:
            mean, std, _ = stats[g.label, col]
            vals.append((fmt_stat(col, mean, std), is_best(col, mean, top[col])))
        rows.append(([*keys, f"{len(g.done)}/{len(g.cells)}"], vals))
    return cols, rows


REFERENCE_ALGORITHM = "supervised"
ALGORITHM_KEY = "client.algorithm"


def reference_gains(bench: Bench, results, col: str = "acc_all") -> list[str]:
    """One line per SSL configuration that has a ``supervised`` twin in the grid (the
    same values of every other varied key): the paired final-round gain in points,
    mean over the seeds both finished, and per seed. Paired by seed, because cells of
    one seed share the partition and the initial model."""
    import pandas as pd

    if ALGORITHM_KEY not in bench.keys:
        return []
    others = [k for k in bench.keys if k not in (ALGORITHM_KEY, SEED_KEY)]
    done = results[results["cell"].isin({c.id for c in bench.cells if c.finished})]
    value = pd.to_numeric(done[col], errors="coerce")
    lines = []
    for key, part in done.assign(_v=value).groupby(others or (lambda _: 0), sort=False, dropna=False):
        by_alg = {a: g.set_index(SEED_KEY)["_v"] for a, g in part.groupby(ALGORITHM_KEY, sort=False)}
        ref = by_alg.get(REFERENCE_ALGORITHM)
        if ref is None:
            continue
        where = "" if not others else " (" + ", ".join(
            f"{k}={fmt_value(v)}" for k, v in zip(others, key if isinstance(key, tuple) else (key,))) + ")"
        for alg, vals in by_alg.items():
            if alg == REFERENCE_ALGORITHM:
                continue
            diff = ((vals - ref).dropna() * 100.0).sort_index()
            if diff.empty:
                continue
            seeds = ", ".join(f"seed {s}: {d:+.1f}" for s, d in diff.items())
            lines.append(f"{alg} vs {REFERENCE_ALGORITHM}{where}: {diff.mean():+.1f} points of "
                         f"{col} (final round), paired over {len(diff)} seed(s) ({seeds}; a "
                         f"seed fixes the partition and the initial model)")
    return lines
