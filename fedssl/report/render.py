"""Render a bench or a run directory: every output is a pure function of its files."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fedssl.report.layout import GRID_JSON
from fedssl.config import ConfigError
from fedssl.report import html, plots
from fedssl.report import stream as stream_plots
from fedssl.report.markdown import summary_markdown
from fedssl.report.model import (
    FINAL,
    PLOTS,
    REPORT_HTML,
    RESULTS_CSV,
    SEED_KEY,
    SUMMARY_MD,
    Bench,
    load_bench,
    num,
    read_json,
    read_metrics,
    results_frame,
)
from fedssl.report.stats import groups_of, reference_gains, status_counts


def write_results(bench: Bench):
    """results.csv and summary.md (cheap; the bench rewrites them after every cell)."""
    from fedssl.runlog import write_atomic

    results = results_frame(bench)
    write_atomic(bench.dir / RESULTS_CSV, results.to_csv(index=False, float_format="%.6g",
                                                         lineterminator="\n"))
    write_atomic(bench.dir / SUMMARY_MD, summary_markdown(bench, results))
    return results


def _bench_figures(bench: Bench, results) -> list[tuple[str, Path | None, str]]:
    groups = groups_of(bench)
    plots_dir = bench.dir / PLOTS
    for old in plots_dir.glob("*.png") if plots_dir.exists() else []:
        old.unlink()
    return [
        ("Accuracy vs round", plots.plot_curves(bench, groups, plots_dir / "accuracy_vs_round.png"),
         "Test accuracy on all classes after each round; the band spans the seeds."),
        ("Seen / unseen / all accuracy", plots.plot_bars(bench, groups, results, plots_dir / "accuracy_bars.png"),
         "Final-round accuracy per configuration, grouped by class subset."),
        ("Per-class accuracy", plots.plot_heatmap(bench, groups, plots_dir / "per_class_heatmap.png"),
         ("Final per-class accuracy; globally-unseen classes (present on a single client) are "
          "outlined in red.")),
        ("Confusion matrix", plots.plot_confusion(bench, groups, plots_dir / "confusion.png"),
         ("Final model, true class (rows) x predicted output (columns: each seen class's own "
          "output, then the outputs matched to the unseen classes over all samples, so the "
          "diagonal is what acc_seen and acc_unseen_strict count); shares of each true class, "
          "mean over seeds. An unseen row's mass in seen columns is its absorption.")),
        ("Accuracy vs wall time",
         plots.plot_curves(bench, groups, plots_dir / "accuracy_vs_wall_time.png", x="wall"),
         "Test accuracy against training time (seconds since the first round, mean over seeds)."),
    ]


def render_bench(bench_dir: Path) -> dict[str, Path]:
    """results.csv, summary.md, plots/*.png and report.html of a bench directory."""
    from fedssl.runlog import write_atomic

    bench = load_bench(bench_dir)
    results = write_results(bench)
    figs = _bench_figures(bench, results)
    n = status_counts(bench)
    note = (f"grid file {bench.grid_file} · {len(bench.cells)} cells: {n['ok']} ok, {n['diverged']} "
            f"diverged, {n['failed']} failed, {n['interrupted']} interrupted, {n['pending']} pending · "
            f"varied keys: {', '.join(bench.keys) or '(none)'}")
    sections = [html.Section("Summary", f"Mean ± std over {SEED_KEY}; accuracies in %; best mean per "
                             "column in bold.", html.summary_table(bench, results))]
    gains = reference_gains(bench, results)
    if gains:
        sections.append(html.Section("Over the supervised reference", " ".join(gains)))
    sections += [html.image_section(h, caption, p) for h, p, caption in figs if p is not None]
    sections.append(html.Section("All cells", table=html.results_table(results)))
    title = f"fedssl benchmark: {Path(bench.grid_file).name or bench_dir.name}"
    write_atomic(bench_dir / REPORT_HTML, html.page(title, note, sections))
    out = {"results": bench_dir / RESULTS_CSV, "summary": bench_dir / SUMMARY_MD,
           "report": bench_dir / REPORT_HTML}
    out.update({p.stem: p for _, p, _ in figs if p is not None})
    return out


def _final_table(metrics) -> str:
    import pandas as pd

    last = metrics.iloc[-1]
    cols = [m for m in FINAL if m in metrics and not math.isnan(num(last[m]))]
    row = {"round": str(int(last["round"])), **{c: f"{num(last[c]):.0f}" if c == "discovered" else f"{num(last[c]):.4f}" for c in cols},
           "wall_s": f"{num(last.get('wall_s')):.1f}"}
    return pd.DataFrame([row]).style.set_uuid("final").hide(axis="index").to_html()


def render_run(run_dir: Path) -> dict[str, Path]:
    """A single run: accuracy/loss curves, per-class bars, final metrics table."""
    from fedssl.runlog import write_atomic

    metrics = read_metrics(run_dir / "metrics.csv")
    if metrics is None:
        raise ConfigError(f"{run_dir / 'metrics.csv'}: no rounds recorded yet")
    summary = read_json(run_dir / "summary.json") or {}
    curve = plots.save(plots.run_curve(metrics), run_dir / PLOTS / "curve.png")
    pc_fig = plots.run_per_class(metrics, summary)
    per_class = plots.save(pc_fig, run_dir / PLOTS / "per_class.png") if pc_fig is not None else None
    cfg = summary.get("config") or _read_toml(run_dir / "config.toml")
    title = (f"fedssl run: {cfg.get('server', {}).get('strategy', '?')} + "
             f"{cfg.get('client', {}).get('algorithm', '?')} ({run_dir.name})")
    status = summary.get("status", "running or interrupted (no summary.json)")
    sections = [html.Section("Final metrics", table=_final_table(metrics)),
                html.image_section("Curves", "", curve)]
    if per_class is not None:
        sections.append(html.image_section("Per-class accuracy", "", per_class))
    cm_fig = plots.run_confusion(summary)
    confusion = plots.save(cm_fig, run_dir / PLOTS / "confusion.png") if cm_fig is not None else None
    if confusion is not None:
        sections.append(html.image_section(
            "Confusion matrix", "True class (rows) x predicted output (columns: each seen class's "
            "own output, then the outputs matched to the unseen classes over all samples; the "
            "diagonal is what acc_seen and acc_unseen_strict count).", confusion))
    stream_fig = stream_plots.run_stream(metrics, summary)
    png = plots.save(stream_fig, run_dir / PLOTS / "stream.png") if stream_fig is not None else None
    if png is not None:
        sections.append(html.image_section("Stages", "Accuracy matrix R (rows: after stage i; columns: test "
                                           "split in domain j) and accuracy per domain over rounds.", png))
    partition = _partition_figure(run_dir)
    if partition is not None:
        sections.append(html.image_section("Partition", "Samples per class on each client "
                                           "(hatched: labeled).", partition))
    write_atomic(run_dir / REPORT_HTML, html.page(title, f"{run_dir} · status: {status}", sections))
    out = {"report": run_dir / REPORT_HTML, "curve": curve}
    if per_class is not None:
        out["per_class"] = per_class
    if confusion is not None:
        out["confusion"] = confusion
    if png is not None:
        out["stream"] = png
    if partition is not None:
        out["partition"] = partition
    return out


def _partition_figure(run_dir: Path) -> Path | None:
    """The label distribution from the run's partition.csv (absent under `flwr run`)."""
    from fedssl.data.plot import PARTITION_CSV, label_distribution_figure, read_counts_csv

    if not (run_dir / PARTITION_CSV).exists():
        return None
    return plots.save(label_distribution_figure(read_counts_csv(run_dir / PARTITION_CSV)),
                      run_dir / PLOTS / "partition.png")


def _read_toml(path: Path) -> dict[str, Any]:
    import tomllib

    try:
        return tomllib.loads(path.read_text())
    except (OSError, ValueError):
        return {}


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
