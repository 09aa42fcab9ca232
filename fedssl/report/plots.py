"""The report's figures (matplotlib, no display needed): accuracy curves, final-accuracy
bars and the per-class heatmap of a bench; curves and per-class bars of one run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fedssl.report.model import ACC, ORCA_PROTOCOL, Bench, Cell, num
from fedssl.report.layout import fmt_value
from fedssl.report.stats import Group, mean_std_n


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=100, layout="constrained")


def save(fig, path: Path) -> Path:
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
        out.setdefault(f"{keys[0]}={fmt_value(g.params[keys[0]])}", []).append(g)
    return list(out.items())


def _line_labels(bench: Bench, groups: list[Group], faceted: bool) -> dict[str, str]:
    keys = bench.group_keys[1:] if faceted else bench.group_keys
    if not keys:
        return {g.label: g.label for g in groups}
    return {g.label: " · ".join(fmt_value(g.params[k]) for k in keys) for g in groups}


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
        if ax.get_legend_handles_labels()[0]:  # a facet whose cells all failed has no curve
            ax.legend(fontsize=7, loc="lower right")
    for j in range(len(facets), rows * cols):
        axes[j // cols][j % cols].set_visible(False)
    if not drawn:
        return None
    what = "round" if x == "round" else "wall time"
    fig.suptitle(f"Test accuracy vs {what} (line: mean, band: min–max over seeds)", fontsize=11)
    return save(fig, path)


def plot_bars(bench: Bench, groups: list[Group], results, path: Path) -> Path | None:
    """Final seen / unseen / all accuracy per configuration (mean, error bar = std)."""
    import numpy as np

    by_cell = {r["cell"]: r for r in results.to_dict("records")}
    metrics = [m for m in ACC if any(not math.isnan(num(by_cell[c.id][m])) for g in groups for c in g.done)]
    shown = [g for g in groups if g.done]
    if not metrics or not shown:
        return None
    fig = _figure(min(18.0, max(6.0, len(shown) * (0.12 * len(metrics) + 0.25) + 2.0)), 4.6)
    ax = fig.add_subplot()
    width = 0.8 / len(metrics)
    xs = np.arange(len(shown))
    for i, (m, c) in enumerate(zip(metrics, _colors(len(metrics)))):
        st = [mean_std_n([num(by_cell[cell.id][m]) for cell in g.done]) for g in shown]
        means = [s[0] for s in st]
        errs = [0.0 if math.isnan(s[1]) else s[1] for s in st]
        ax.bar(xs + (i - (len(metrics) - 1) / 2) * width, means, width, yerr=errs, color=c,
               label=_short(m), capsize=2, error_kw={"lw": 0.8})
    ax.set_xticks(xs, [g.label for g in shown], rotation=35 if len(shown) > 4 else 0,
                  ha="right" if len(shown) > 4 else "center", fontsize=8)
    _acc_axes(ax, "final accuracy")
    ax.legend(fontsize=8, ncols=min(3, len(metrics)), loc="lower center", bbox_to_anchor=(0.5, 1.0),
              frameon=False)
    fig.suptitle("Final accuracy: all / unseen (all-sample matching) / seen / unseen (ORCA protocol) "
                 "(mean ± std over seeds)", fontsize=11)
    return save(fig, path)


def _short(col: str) -> str:
    """A metric's legend label: the ORCA protocol's unseen-only matching says so."""
    return col.removeprefix("acc_") + (" (ORCA protocol)" if col in ORCA_PROTOCOL else "")


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
    return {int(k): num(v) for k, v in pc.items()}


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
            grid[r, j] = mean_std_n([p.get(j, math.nan) for p in pcs])[0]
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
    return save(fig, path)



def run_curve(m):
    import pandas as pd

    fig = _figure(10, 3.8)
    ax1, ax2 = fig.subplots(1, 2)
    for col, c in zip(ACC, _colors(len(ACC))):
        if col in m:
            v = pd.to_numeric(m[col], errors="coerce")
            if v.notna().any():
                ax1.plot(m["round"], v, label=_short(col), color=c, marker="o", ms=3)
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


def run_per_class(m, summary: dict[str, Any]):
    pc = _per_class(summary)
    if not pc:
        cols = [c for c in m.columns if c.startswith("acc_class_")]
        pc = {int(c.removeprefix("acc_class_")): num(m[c].iloc[-1]) for c in cols}
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


def confusion_axes(ax, share, names: list[str], seen: set[int], title: str) -> None:
    """Row-normalised confusion matrix (true class x output, outputs in the order of
    ``fedssl.metrics.confusion_matrix``: seen outputs first, as their classes)."""
    k = share.shape[0]
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ticks = [n + ("" if j in seen else " *") for j, n in enumerate(names)]
    ax.set_xticks(range(k), ticks, rotation=90, fontsize=7)
    ax.set_yticks(range(k), ticks, fontsize=7)
    ax.set_xlabel("predicted output (matched class)", fontsize=8)
    ax.set_ylabel("true class", fontsize=8)
    ax.set_title(title, fontsize=9)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if share[i, j] >= 0.05:
                    ax.text(j, i, f"{share[i, j]:.2f}", ha="center", va="center", fontsize=5.5,
                            color="white" if share[i, j] > 0.6 else "black")


def _confusion_share(summaries: list[dict[str, Any]]):
    """Mean over ``summaries`` of the row-normalised confusion matrices (None without any)."""
    import numpy as np

    mats = [np.asarray(s["confusion_matrix"]["counts"], dtype=float) for s in summaries
            if (s.get("confusion_matrix") or {}).get("counts")]
    if not mats or len({m.shape for m in mats}) > 1:
        return None
    return np.mean([m / np.maximum(m.sum(1, keepdims=True), 1) for m in mats], axis=0)


def plot_confusion(bench: Bench, groups: list[Group], path: Path) -> Path | None:
    """One confusion matrix per open-world configuration, mean over its seeds."""
    shown = [(g, share) for g in groups if (share := _confusion_share([c.summary or {} for c in g.done]))
             is not None]
    if not shown:
        return None
    summary = shown[0][0].done[0].summary or {}
    k = shown[0][1].shape[0]
    names = _class_names(((summary.get("config") or {}).get("data") or {}).get("dataset"), k)
    cols = min(3, len(shown))
    rows = -(-len(shown) // cols)
    fig = _figure(cols * (0.35 * k + 2.5), rows * (0.35 * k + 2.3))
    for i, (g, share) in enumerate(shown):
        seen = set(_class_sets([c.summary or {} for c in g.done])[0])
        confusion_axes(fig.add_subplot(rows, cols, i + 1), share, names, seen, g.label)
    fig.suptitle("Confusion of the final model (share of each true class; * unseen class)", fontsize=11)
    return save(fig, path)


def confusion_panels(summaries: list[dict[str, Any]], titles: list[str]):
    """One confusion-matrix panel per run summary (None when a summary holds none)."""
    shares = [_confusion_share([s]) for s in summaries]
    if not shares or any(sh is None for sh in shares):
        return None
    k = shares[0].shape[0]
    names = _class_names(((summaries[0].get("config") or {}).get("data") or {}).get("dataset"), k)
    fig = _figure(len(shares) * (0.35 * k + 2.8), 0.35 * k + 2.8)
    for i, (s, share, title) in enumerate(zip(summaries, shares, titles)):
        confusion_axes(fig.add_subplot(1, len(shares), i + 1), share, names, set(s.get("seen_classes") or []),
                       title)
    fig.suptitle("Confusion of the final model (share of each true class; * unseen class)", fontsize=11)
    return fig


def run_confusion(summary: dict[str, Any]):
    return confusion_panels([summary], [""])
