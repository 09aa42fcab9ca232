"""``fedssl report DIR``: tables and plots of a bench directory or of a single run.

Everything here is re-rendered from files on disk (never by retraining):

* a **bench directory** (written by ``fedssl bench``) holds ``grid.json`` (the cells and
  the keys they vary), ``runs/<cell>/`` (each cell's ``metrics.csv`` / ``summary.json``)
  and ``cells/<cell>.json`` (the bench's record of a failed or interrupted cell). From
  them this module writes ``results.csv`` (one row per cell), ``summary.md`` (mean ± std
  over seeds per configuration, best mean per column in bold), ``plots/*.png`` and
  ``report.html`` (one self-contained file: the PNGs are embedded as ``data:`` URIs);
* a **run directory** (one holding ``metrics.csv``) gets a small ``report.html`` and
  ``plots/`` (accuracy/loss curves and per-class accuracy bars).

The output is a pure function of those files, so ``fedssl report DIR`` reproduces the
``summary.md`` that ``fedssl bench`` wrote byte for byte.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedssl.config import ConfigError

# ----------------------------------------------------------------------------- layout

GRID_JSON = "grid.json"
RESULTS_CSV = "results.csv"
SUMMARY_MD = "summary.md"
REPORT_HTML = "report.html"
PLOTS = "plots"

ACC = ["acc_all", "acc_seen", "acc_unseen", "acc_local_unseen", "acc_global_unseen"]
FINAL = ACC + ["loss"]
#: summary.json statuses of a run that ended on its own (its numbers are a result).
FINISHED = ("ok", "diverged")
SEED_KEY = "run.seed"


def runs_dir(bench: Path) -> Path:
    return bench / "runs"


def cells_dir(bench: Path) -> Path:
    return bench / "cells"


def logs_dir(bench: Path) -> Path:
    return bench / "logs"


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def finished_summary(run_dir: Path) -> dict[str, Any] | None:
    """The run's summary.json when the run ended on its own (status ok / diverged)."""
    s = read_json(run_dir / "summary.json")
    return s if s is not None and s.get("status") in FINISHED else None


def _read_metrics(path: Path):
    import pandas as pd

    if not path.exists():
        return None
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError):
        return None
    return df if "round" in df.columns and len(df) else None


# ------------------------------------------------------------------------ bench data


@dataclass
class Cell:
    id: str
    params: dict[str, Any]
    status: str  # ok | diverged | failed | interrupted | pending
    seed: Any = None
    error: str = ""
    exit_code: Any = None
    cell_s: float | None = None
    summary: dict[str, Any] | None = None
    metrics: Any = None  # DataFrame of metrics.csv (finished cells only)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


@dataclass
class Bench:
    dir: Path
    grid_file: str
    keys: list[str]  # the varied keys, in grid order
    cells: list[Cell] = field(default_factory=list)

    @property
    def group_keys(self) -> list[str]:
        return [k for k in self.keys if k != SEED_KEY]


def load_bench(bench_dir: Path) -> Bench:
    meta = read_json(bench_dir / GRID_JSON)
    if meta is None or not isinstance(meta.get("cells"), list):
        raise ConfigError(f"{bench_dir / GRID_JSON}: unreadable bench index")
    bench = Bench(bench_dir, str(meta.get("grid_file", "")), list(meta.get("keys", [])))
    for entry in meta["cells"]:
        cid = entry["id"]
        run = runs_dir(bench_dir) / cid
        rec = read_json(cells_dir(bench_dir) / f"{cid}.json") or {}
        summary = finished_summary(run)
        cell = Cell(cid, dict(entry.get("params", {})), "pending", seed=entry.get("seed"))
        if summary is not None:
            cell.status, cell.summary = summary["status"], summary
            cell.metrics = _read_metrics(run / "metrics.csv")
        elif rec.get("status") in ("failed", "interrupted"):
            cell.status = rec["status"]
            cell.error = str(rec.get("error", ""))
            cell.exit_code = rec.get("exit_code")
        if rec:
            cell.cell_s = rec.get("cell_s")
            cell.exit_code = rec.get("exit_code")
        bench.cells.append(cell)
    return bench


def _num(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f


def results_frame(bench: Bench):
    """One row per cell: varied keys, seed, status/error, final and best metrics, time."""
    import pandas as pd

    rows = []
    for c in bench.cells:
        row: dict[str, Any] = {"cell": c.id}
        row.update({k: c.params.get(k) for k in bench.keys})
        if SEED_KEY not in bench.keys:
            row[SEED_KEY] = c.seed
        row.update(status=c.status, error=c.error, exit_code=c.exit_code)
        final = (c.summary or {}).get("final", {}) if c.finished else {}
        row["rounds"] = final.get("round") if c.finished else None
        for m in FINAL:
            row[m] = _num(final.get(m))
        best, best_round = math.nan, None
        if c.finished and c.metrics is not None and "acc_all" in c.metrics:
            accs = pd.to_numeric(c.metrics["acc_all"], errors="coerce")
            if accs.notna().any():
                i = int(accs.idxmax())
                best, best_round = float(accs[i]), int(c.metrics["round"][i])
        row["best_acc_all"], row["best_round"] = best, best_round
        row["wall_s"] = _num((c.summary or {}).get("elapsed_s")) if c.finished else math.nan
        row["cell_s"] = _num(c.cell_s)
        rows.append(row)
    df = pd.DataFrame(rows)
    for col in ("exit_code", "rounds", "best_round"):
        df[col] = df[col].astype("Int64")
    return df


# ---------------------------------------------------------------------- aggregation

SUMMARY_COLS = ACC + ["best_acc_all", "loss", "wall_s"]
LOWER_IS_BETTER = {"loss", "wall_s"}


def _fmt_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def config_label(bench: Bench, params: dict[str, Any]) -> str:
    if not bench.group_keys:
        return "all"
    return " · ".join(_fmt_value(params.get(k)) for k in bench.group_keys)


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


def _stats(values: list[float]) -> tuple[float, float, int]:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return math.nan, math.nan, 0
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return mean, math.nan, len(vals)
    var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)
    return mean, math.sqrt(var), len(vals)


def summary_stats(bench: Bench, results) -> tuple[list[Group], list[str], dict[tuple[str, str], tuple[float, float, int]]]:
    groups = groups_of(bench)
    by_cell = {r["cell"]: r for r in results.to_dict("records")}
    stats: dict[tuple[str, str], tuple[float, float, int]] = {}
    for g in groups:
        for col in SUMMARY_COLS:
            stats[g.label, col] = _stats([_num(by_cell[c.id][col]) for c in g.done])
    cols = [c for c in SUMMARY_COLS if any(stats[g.label, c][2] for g in groups)]
    return groups, cols, stats


def _best(groups: list[Group], col: str, stats) -> float:
    means = [stats[g.label, col][0] for g in groups if not math.isnan(stats[g.label, col][0])]
    if not means:
        return math.nan
    return min(means) if col in LOWER_IS_BETTER else max(means)


def _scale(col: str) -> tuple[float, int]:
    if col.startswith("acc") or col == "best_acc_all":
        return 100.0, 2
    if col == "wall_s":
        return 1.0, 1
    return 1.0, 4


def _fmt_stat(col: str, mean: float, std: float) -> str:
    if math.isnan(mean):
        return "–"
    scale, digits = _scale(col)
    text = f"{mean * scale:.{digits}f}"
    if not math.isnan(std):
        text += f" ± {std * scale:.{digits}f}"
    return text


def _is_best(col: str, mean: float, best: float) -> bool:
    """Best at the shown precision (ties are all bold)."""
    if math.isnan(mean) or math.isnan(best):
        return False
    return _fmt_stat(col, mean, math.nan) == _fmt_stat(col, best, math.nan)


def _counts(bench: Bench) -> dict[str, int]:
    out = {s: 0 for s in ("ok", "diverged", "failed", "interrupted", "pending")}
    for c in bench.cells:
        out[c.status] = out.get(c.status, 0) + 1
    return out


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def summary_markdown(bench: Bench, results) -> str:
    groups, cols, stats = summary_stats(bench, results)
    n = _counts(bench)
    done = n["ok"] + n["diverged"]
    title = Path(bench.grid_file).name or bench.dir.name
    lines = [f"# Benchmark: {title}", ""]
    lines.append(f"{done} of {len(bench.cells)} cells finished ({n['diverged']} diverged, "
                 f"{n['failed']} failed, {n['interrupted']} interrupted, {n['pending']} pending).")
    lines.append("")
    lines.append(f"Mean ± std over `{SEED_KEY}` (n = finished runs / cells of the configuration); "
                 "accuracies in %, final round unless `best_`; `wall_s` is training time in "
                 "seconds. The best mean of each column is in **bold**.")
    lines.append("")
    keys = bench.group_keys or ["configuration"]
    header = keys + ["n"] + cols
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] * len(keys) + ["--:"] * (1 + len(cols))) + "|")
    best = {col: _best(groups, col, stats) for col in cols}
    for g in groups:
        vals = [_md_escape(_fmt_value(g.params[k])) for k in bench.group_keys] or ["all"]
        vals.append(f"{len(g.done)}/{len(g.cells)}")
        for col in cols:
            mean, std, _ = stats[g.label, col]
            text = _fmt_stat(col, mean, std)
            vals.append(f"**{text}**" if _is_best(col, mean, best[col]) else text)
        lines.append("| " + " | ".join(vals) + " |")
    bad = [c for c in bench.cells if c.status in ("failed", "interrupted")]
    if bad:
        lines += ["", "## Cells that did not finish", "", "| cell | status | exit | error |",
                  "|---|---|--:|---|"]
        for c in bad:
            code = "" if c.exit_code is None else str(c.exit_code)
            lines.append(f"| {_md_escape(c.id)} | {c.status} | {code} | {_md_escape(c.error)} |")
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------- plotting


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=100, layout="constrained")


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", metadata={"Software": None})
    return path


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _curve_frame(cells: list[Cell], col: str):
    """Per-round mean / min / max of ``col`` (and mean wall_s) over a group's seeds."""
    import pandas as pd

    frames = []
    for c in cells:
        m = c.metrics
        if m is None or col not in m or m[col].isna().all():
            continue
        frames.append(pd.DataFrame({"round": m["round"], "v": pd.to_numeric(m[col], errors="coerce"),
                                    "wall": pd.to_numeric(m.get("wall_s"), errors="coerce")}))
    if not frames:
        return None
    df = pd.concat(frames)
    return df.groupby("round").agg(mean=("v", "mean"), lo=("v", "min"), hi=("v", "max"),
                                   wall=("wall", "mean")).reset_index()


def _facets(bench: Bench, groups: list[Group]) -> list[tuple[str, list[Group]]]:
    """Many configurations: one panel per value of the first varied key."""
    keys = bench.group_keys
    if len(keys) < 2 or len(groups) <= 8:
        return [("", groups)]
    out: dict[str, list[Group]] = {}
    for g in groups:
        out.setdefault(f"{keys[0]}={_fmt_value(g.params[keys[0]])}", []).append(g)
    return list(out.items())


def _line_labels(bench: Bench, groups: list[Group], faceted: bool) -> dict[str, str]:
    keys = bench.group_keys[1:] if faceted else bench.group_keys
    if not keys:
        return {g.label: g.label for g in groups}
    return {g.label: " · ".join(_fmt_value(g.params[k]) for k in keys) for g in groups}


def _style_map(labels: list[str]) -> dict[str, Any]:
    uniq = list(dict.fromkeys(labels))
    return dict(zip(uniq, _colors(len(uniq))))


def _int_ticks(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _acc_axes(ax, ylabel: str = "accuracy") -> None:
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.set_ylim(0, 1)


def plot_curves(bench: Bench, groups: list[Group], path: Path, x: str = "round") -> Path | None:
    """Accuracy (all) vs round -- or vs wall time -- per configuration; band = min..max over seeds."""
    facets = _facets(bench, groups)
    faceted = len(facets) > 1
    labels = _line_labels(bench, groups, faceted)
    color = _style_map([labels[g.label] for g in groups])
    cols = min(3, len(facets))
    rows = math.ceil(len(facets) / cols)
    fig = _figure(5.2 * cols + 1.5, 3.6 * rows + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
    drawn = False
    for i, (title, gs) in enumerate(facets):
        ax = axes[i // cols][i % cols]
        for g in gs:
            cf = _curve_frame(g.done, "acc_all")
            if cf is None:
                continue
            drawn = True
            xs = cf["round"] if x == "round" else cf["wall"]
            c = color[labels[g.label]]
            ax.plot(xs, cf["mean"], color=c, label=labels[g.label], lw=1.6,
                    marker="o" if len(cf) < 15 else None, ms=3)
            if len(g.done) > 1:
                ax.fill_between(xs, cf["lo"], cf["hi"], color=c, alpha=0.18, lw=0)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("round" if x == "round" else "wall time (s, mean over seeds)")
        if x == "round":
            _int_ticks(ax)
        _acc_axes(ax, "accuracy (all classes)")
        ax.legend(fontsize=7, loc="lower right")
    for j in range(len(facets), rows * cols):
        axes[j // cols][j % cols].set_visible(False)
    if not drawn:
        return None
    what = "round" if x == "round" else "wall time"
    fig.suptitle(f"Test accuracy vs {what} (line: mean, band: min–max over seeds)", fontsize=11)
    return _save(fig, path)


def plot_bars(bench: Bench, groups: list[Group], results, path: Path) -> Path | None:
    """Final seen / unseen / all accuracy per configuration (mean, error bar = std)."""
    import numpy as np

    by_cell = {r["cell"]: r for r in results.to_dict("records")}
    metrics = [m for m in ("acc_all", "acc_seen", "acc_unseen", "acc_local_unseen", "acc_global_unseen")
               if any(not math.isnan(_num(by_cell[c.id][m])) for g in groups for c in g.done)]
    shown = [g for g in groups if g.done]
    if not metrics or not shown:
        return None
    fig = _figure(min(18.0, max(6.0, len(shown) * (0.12 * len(metrics) + 0.25) + 2.0)), 4.6)
    ax = fig.add_subplot()
    width = 0.8 / len(metrics)
    xs = np.arange(len(shown))
    for i, (m, c) in enumerate(zip(metrics, _colors(len(metrics)))):
        st = [_stats([_num(by_cell[cell.id][m]) for cell in g.done]) for g in shown]
        means = [s[0] for s in st]
        errs = [0.0 if math.isnan(s[1]) else s[1] for s in st]
        ax.bar(xs + (i - (len(metrics) - 1) / 2) * width, means, width, yerr=errs, color=c,
               label=m.removeprefix("acc_"), capsize=2, error_kw={"lw": 0.8})
    ax.set_xticks(xs, [g.label for g in shown], rotation=35 if len(shown) > 4 else 0,
                  ha="right" if len(shown) > 4 else "center", fontsize=8)
    _acc_axes(ax, "final accuracy")
    ax.legend(fontsize=8, ncols=len(metrics), loc="lower center", bbox_to_anchor=(0.5, 1.0),
              frameon=False)
    fig.suptitle("Final accuracy: all / seen / unseen classes (mean ± std over seeds)", fontsize=11)
    return _save(fig, path)


def _class_names(dataset: str | None, k: int) -> list[str]:
    try:
        from fedssl.data import sources

        names = {"fashion-mnist": sources.FASHION_CLASSES, "cifar10": sources.CIFAR10_CLASSES,
                 "cinic10": sources.CINIC10_CLASSES, "cifar100": sources.CIFAR100_CLASSES}.get(dataset or "")
    except Exception:  # pragma: no cover - names are decoration only
        names = None
    if names and len(names) == k and k <= 20:
        return [f"{i} {n}" for i, n in enumerate(names)]
    return [str(i) for i in range(k)]


def _class_sets(summaries: list[dict[str, Any]]) -> tuple[set[int], set[int], set[int]]:
    seen, local, glob = set(), set(), set()
    for s in summaries:
        seen |= set(s.get("seen_classes") or [])
        local |= set(s.get("local_unseen_classes") or [])
        glob |= set(s.get("global_unseen_classes") or [])
    return seen, local, glob


def _per_class(summary: dict[str, Any]) -> dict[int, float]:
    pc = summary.get("per_class_accuracy") or {}
    return {int(k): _num(v) for k, v in pc.items()}


def plot_heatmap(bench: Bench, groups: list[Group], path: Path) -> Path | None:
    """Per-class final accuracy (configs x classes); globally-unseen classes outlined in red."""
    import numpy as np
    from matplotlib.patches import Rectangle

    shown = [g for g in groups if any(_per_class(c.summary or {}) for c in g.done)]
    if not shown:
        return None
    k = 1 + max(max(_per_class(c.summary)) for g in shown for c in g.done if _per_class(c.summary))
    grid = np.full((len(shown), k), np.nan)
    glob_rows: list[set[int]] = []
    for r, g in enumerate(shown):
        pcs = [_per_class(c.summary) for c in g.done if _per_class(c.summary)]
        for j in range(k):
            grid[r, j] = _stats([p.get(j, math.nan) for p in pcs])[0]
        glob_rows.append(_class_sets([c.summary for c in g.done])[2])
    _, local, glob = _class_sets([c.summary for g in shown for c in g.done])
    dataset = ((shown[0].done[0].summary or {}).get("config") or {}).get("data", {}).get("dataset")
    names = _class_names(dataset, k)
    ticks = []
    for j, n in enumerate(names):
        mark = " [G]" if j in glob else (" [U]" if j in local else "")
        ticks.append(n + mark)
    fig = _figure(max(6.0, 0.6 * k + 3.5), max(2.6, 0.38 * len(shown) + 2.2))
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap="viridis", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, label="final accuracy (mean over seeds)", shrink=0.9)
    ax.set_yticks(range(len(shown)), [g.label for g in shown], fontsize=8)
    ax.set_xticks(range(k), ticks, rotation=45 if k <= 20 else 90, ha="right", fontsize=8)
    for j, lab in enumerate(ax.get_xticklabels()):
        if j in glob:
            lab.set_color("red")
            lab.set_fontweight("bold")
        elif j in local:
            lab.set_color("darkorange")
    for r, cls in enumerate(glob_rows):
        for j in cls:
            ax.add_patch(Rectangle((j - 0.46, r - 0.46), 0.92, 0.92, fill=False, ec="red", lw=2.5))
    if k <= 20 and len(shown) <= 40:
        for r in range(len(shown)):
            for j in range(k):
                if not math.isnan(grid[r, j]):
                    ax.text(j, r, f"{grid[r, j]:.2f}", ha="center", va="center", fontsize=6.5,
                            color="white" if grid[r, j] < 0.6 else "black")
    note = ("red outline / [G]: globally-unseen class (on exactly one client); "
            "orange / [U]: locally-unseen class" if (glob or local) else "all classes seen")
    ax.set_title(f"Per-class final accuracy\n{note}", fontsize=10)
    return _save(fig, path)


# ------------------------------------------------------------------------------ HTML

_SCRIPT = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images-loaded', ok + '/' + imgs.length);
  document.body.setAttribute('data-images-ok', ok === imgs.length ? 'true' : 'false');
});
</script>"""

_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;
max-width:1400px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f2f2f2}td.k,th.k{text-align:left}
tr.failed td{background:#fde8e8}tr.pending td,tr.interrupted td{background:#fff7e0}
img{max-width:100%;height:auto;display:block;margin:1em 0;border:1px solid #eee}
code{background:#f5f5f5;padding:0 3px}.scroll{overflow-x:auto}.muted{color:#777;font-size:12px}"""


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></figure>'


def _page(title: str, body: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n"
            f"<body>\n<h1>{html.escape(title)}</h1>\n" + "\n".join(body) + f"\n{_SCRIPT}\n</body></html>\n")


def _html_summary(bench: Bench, results) -> str:
    groups, cols, stats = summary_stats(bench, results)
    best = {col: _best(groups, col, stats) for col in cols}
    keys = bench.group_keys or ["configuration"]
    out = ["<table><tr>" + "".join(f'<th class="k">{html.escape(k)}</th>' for k in keys)
           + "<th>n</th>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr>"]
    for g in groups:
        vals = [_fmt_value(g.params[k]) for k in bench.group_keys] or ["all"]
        row = "".join(f'<td class="k">{html.escape(v)}</td>' for v in vals)
        row += f"<td>{len(g.done)}/{len(g.cells)}</td>"
        for col in cols:
            mean, std, _ = stats[g.label, col]
            text = html.escape(_fmt_stat(col, mean, std))
            row += f"<td><b>{text}</b></td>" if _is_best(col, mean, best[col]) else f"<td>{text}</td>"
        out.append(f"<tr>{row}</tr>")
    return "\n".join(out) + "</table>"


def _html_results(results) -> str:
    cols = list(results.columns)
    out = ["<table><tr>" + "".join(f'<th class="k">{html.escape(c)}</th>' for c in cols) + "</tr>"]
    for r in results.to_dict("records"):
        cells = []
        for c in cols:
            v = r[c]
            if v is None or (isinstance(v, float) and math.isnan(v)) or str(v) in ("<NA>", "nan"):
                text = ""
            elif isinstance(v, float):
                text = f"{v:.4f}" if c.startswith(("acc", "best_acc", "loss")) else f"{v:.1f}"
            else:
                text = _fmt_value(v)
            cells.append(f'<td class="k">{html.escape(text)}</td>')
        out.append(f'<tr class="{html.escape(str(r["status"]))}">' + "".join(cells) + "</tr>")
    return "\n".join(out) + "</table>"


# -------------------------------------------------------------------------- renderers


def write_results(bench: Bench):
    from fedssl.runlog import write_atomic

    results = results_frame(bench)
    write_atomic(bench.dir / RESULTS_CSV, results.to_csv(index=False, float_format="%.6g",
                                                         lineterminator="\n"))
    write_atomic(bench.dir / SUMMARY_MD, summary_markdown(bench, results))
    return results


def render_bench(bench_dir: Path) -> dict[str, Path]:
    """results.csv, summary.md, plots/*.png and report.html of a bench directory."""
    from fedssl.runlog import write_atomic

    bench = load_bench(bench_dir)
    results = write_results(bench)
    groups = groups_of(bench)
    plots = bench_dir / PLOTS
    for old in plots.glob("*.png") if plots.exists() else []:
        old.unlink()
    figs: list[tuple[str, Path | None, str]] = [
        ("Accuracy vs round", plot_curves(bench, groups, plots / "accuracy_vs_round.png"),
         "Test accuracy on all classes after each round; the band spans the seeds."),
        ("Seen / unseen / all accuracy", plot_bars(bench, groups, results, plots / "accuracy_bars.png"),
         "Final-round accuracy per configuration, grouped by class subset."),
        ("Per-class accuracy", plot_heatmap(bench, groups, plots / "per_class_heatmap.png"),
         "Final per-class accuracy; globally-unseen classes (present on a single client) are "
         "outlined in red."),
        ("Accuracy vs wall time", plot_curves(bench, groups, plots / "accuracy_vs_wall_time.png", x="wall"),
         "Test accuracy against training time (seconds since the first round, mean over seeds)."),
    ]
    n = _counts(bench)
    title = f"fedssl benchmark: {Path(bench.grid_file).name or bench_dir.name}"
    body = [f'<p class="muted">grid file <code>{html.escape(bench.grid_file)}</code> · '
            f"{len(bench.cells)} cells: {n['ok']} ok, {n['diverged']} diverged, {n['failed']} failed, "
            f"{n['interrupted']} interrupted, {n['pending']} pending · varied keys: "
            f"{html.escape(', '.join(bench.keys) or '(none)')}</p>",
            "<h2>Summary</h2>",
            f"<p>Mean ± std over <code>{SEED_KEY}</code>; accuracies in %; best mean per column in "
            "bold.</p>", _html_summary(bench, results)]
    for heading, path, caption in figs:
        if path is not None:
            body += [f"<h2>{html.escape(heading)}</h2>", f"<p>{html.escape(caption)}</p>",
                     _img(path, heading)]
    body += ["<h2>All cells</h2>", f'<div class="scroll">{_html_results(results)}</div>']
    write_atomic(bench_dir / REPORT_HTML, _page(title, body))
    out = {"results": bench_dir / RESULTS_CSV, "summary": bench_dir / SUMMARY_MD,
           "report": bench_dir / REPORT_HTML}
    out.update({p.stem: p for _, p, _ in figs if p is not None})
    return out


def render_run(run_dir: Path) -> dict[str, Path]:
    """A single run: accuracy/loss curves, per-class bars, final metrics table."""
    from fedssl.runlog import write_atomic

    metrics = _read_metrics(run_dir / "metrics.csv")
    if metrics is None:
        raise ConfigError(f"{run_dir / 'metrics.csv'}: no rounds recorded yet")
    summary = read_json(run_dir / "summary.json") or {}
    plots = run_dir / PLOTS
    curve = _save(_run_curve(metrics), plots / "curve.png")
    pc_fig = _run_per_class(metrics, summary)
    per_class = _save(pc_fig, plots / "per_class.png") if pc_fig is not None else None
    last = metrics.iloc[-1]
    cfg = summary.get("config") or _read_toml(run_dir / "config.toml")
    title = (f"fedssl run: {cfg.get('server', {}).get('strategy', '?')} + "
             f"{cfg.get('client', {}).get('algorithm', '?')} ({run_dir.name})")
    cols = [m for m in FINAL if m in metrics and not math.isnan(_num(last[m]))]
    table = ("<table><tr><th>round</th>" + "".join(f"<th>{c}</th>" for c in cols) + "<th>wall_s</th></tr>"
             f"<tr><td>{int(last['round'])}</td>" + "".join(f"<td>{_num(last[c]):.4f}</td>" for c in cols)
             + f"<td>{_num(last.get('wall_s')):.1f}</td></tr></table>")
    status = summary.get("status", "running or interrupted (no summary.json)")
    body = [f'<p class="muted">{html.escape(str(run_dir))} · status: {html.escape(str(status))}</p>',
            "<h2>Final metrics</h2>", table, "<h2>Curves</h2>", _img(curve, "accuracy and loss vs round")]
    if per_class is not None:
        body += ["<h2>Per-class accuracy</h2>", _img(per_class, "per-class accuracy")]
    write_atomic(run_dir / REPORT_HTML, _page(title, body))
    out = {"report": run_dir / REPORT_HTML, "curve": curve}
    if per_class is not None:
        out["per_class"] = per_class
    return out


def _read_toml(path: Path) -> dict[str, Any]:
    import tomllib

    try:
        return tomllib.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _run_curve(m):
    import pandas as pd

    fig = _figure(10, 3.8)
    ax1, ax2 = fig.subplots(1, 2)
    for col, c in zip(ACC, _colors(len(ACC))):
        if col in m:
            v = pd.to_numeric(m[col], errors="coerce")
            if v.notna().any():
                ax1.plot(m["round"], v, label=col.removeprefix("acc_"), color=c, marker="o", ms=3)
    ax1.set_xlabel("round")
    _int_ticks(ax1)
    _acc_axes(ax1, "test accuracy")
    ax1.legend(fontsize=8)
    ax2.plot(m["round"], pd.to_numeric(m["loss"], errors="coerce"), color="black", marker="o", ms=3)
    ax2.set_xlabel("round")
    _int_ticks(ax2)
    ax2.set_ylabel("test loss")
    ax2.grid(True, alpha=0.3)
    fig.suptitle("Global model on the held-out test split", fontsize=11)
    return fig


def _run_per_class(m, summary: dict[str, Any]):
    pc = _per_class(summary)
    if not pc:
        cols = [c for c in m.columns if c.startswith("acc_class_")]
        pc = {int(c.removeprefix("acc_class_")): _num(m[c].iloc[-1]) for c in cols}
    if not pc:
        return None
    k = 1 + max(pc)
    seen, local, glob = _class_sets([summary])
    colors = ["red" if j in glob else "darkorange" if j in local else "tab:blue" for j in range(k)]
    dataset = (summary.get("config") or {}).get("data", {}).get("dataset")
    fig = _figure(max(6.0, 0.5 * k + 2), 3.8)
    ax = fig.add_subplot()
    ax.bar(range(k), [pc.get(j, math.nan) for j in range(k)], color=colors)
    ax.set_xticks(range(k), _class_names(dataset, k), rotation=45 if k <= 20 else 90, ha="right", fontsize=8)
    _acc_axes(ax, "final accuracy")
    ax.set_title("Per-class accuracy (blue: seen, orange: locally-unseen, red: globally-unseen)",
                 fontsize=10)
    return fig


def render(path: Path) -> tuple[str, dict[str, Path]]:
    """Render a bench or a run directory; ConfigError for anything else."""
    if not path.is_dir():
        raise ConfigError(f"{path}: no such directory")
    if (path / GRID_JSON).exists():
        return "bench", render_bench(path)
    if (path / "metrics.csv").exists():
        return "run", render_run(path)
    raise ConfigError(f"{path}: neither a bench directory ({GRID_JSON}) nor a run directory "
                      "(metrics.csv)")


# ------------------------------------------------------------------------------- CLI


def cmd_report(args: argparse.Namespace) -> int:
    kind, files = render(Path(args.dir))
    if not getattr(args, "quiet", False):
        print(f"{kind} report: " + ", ".join(str(p) for p in files.values()))
    return 0


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("report", help="(re)render tables and plots of a run or bench directory")
    p.add_argument("dir", metavar="DIR", help="a bench directory (fedssl bench --out) or a run directory")
    p.add_argument("--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(func=cmd_report)
