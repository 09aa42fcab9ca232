"""Plots of an incremental run ([stream]): the accuracy matrix R and per-domain accuracy."""

from __future__ import annotations

from typing import Any

from fedssl.report.plots import _acc_axes, _colors, _figure, _int_ticks


def run_stream(m, summary: dict[str, Any]):
    """Left: heatmap of R[i][j] (global model after stage i, test split in domain j).
    Right: accuracy on each domain's test split after every evaluated round, with the
    stage boundaries drawn. None when the run has no stages."""
    import numpy as np
    import pandas as pd

    s = summary.get("stream") or {}
    cols = sorted((c for c in m.columns if c.startswith("acc_domain_")), key=lambda c: int(c.rsplit("_", 1)[1]))
    if not cols:
        return None
    domains = s.get("domains") or [c.removeprefix("acc_domain_") for c in cols]
    fig = _figure(12, 4.2)
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.5]})
    r = np.full((len(domains), len(domains)), np.nan)
    for i, row in enumerate(s.get("R") or []):
        r[i, :len(row)] = row
    ax1.imshow(r, vmin=0, vmax=1, cmap="viridis")
    for i in range(r.shape[0]):
        for j in range(r.shape[1]):
            if not np.isnan(r[i, j]):
                ax1.text(j, i, f"{100 * r[i, j]:.1f}", ha="center", va="center", fontsize=8,
                         color="white" if r[i, j] < 0.6 else "black")
    ax1.set_xticks(range(len(domains)), domains, rotation=45, ha="right", fontsize=8)
    ax1.set_yticks(range(len(domains)), [f"after {i}: {d}" for i, d in enumerate(domains)], fontsize=8)
    ax1.set_xlabel("test domain j")
    ax1.set_title("R[i][j] (accuracy, %)", fontsize=10)
    for col, c, name in zip(cols, _colors(len(cols)), domains):
        ax2.plot(m["round"], pd.to_numeric(m[col], errors="coerce"), color=c, marker="o", ms=2, label=name)
    rps = ((summary.get("config") or {}).get("stream") or {}).get("rounds_per_stage")
    if rps:
        for b in range(rps, int(m["round"].max()), rps):
            ax2.axvline(b + 0.5, color="grey", ls="--", lw=0.8)
    ax2.set_xlabel("round (dashed: stage boundaries)")
    _int_ticks(ax2)
    _acc_axes(ax2, "test accuracy per domain")
    ax2.legend(fontsize=8)
    figs = {k: s.get(k) for k in ("final_avg_acc", "avg_incremental_acc", "forgetting", "bwt", "fwt")}
    fig.suptitle("  ".join(f"{k} {100 * v:.1f}" for k, v in figs.items() if isinstance(v, float)), fontsize=10)
    return fig
