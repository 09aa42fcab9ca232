"""What a report is made of, read from files on disk: a bench's cells (with their
summaries and metrics) and the per-cell results table."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedssl.report.layout import GRID_JSON, cells_dir, record_path, runs_dir
from fedssl.config import ConfigError

RESULTS_CSV = "results.csv"
SUMMARY_MD = "summary.md"
REPORT_HTML = "report.html"
PLOTS = "plots"

#: Open world: all-class accuracy and the unseen metrics of one matching over all samples
#: lead; the ORCA protocol's unseen-only matching (which credits an unseen class absorbed
#: into a seen output) follows, labelled as such.
ORCA_PROTOCOL = ["acc_unseen", "acc_local_unseen", "acc_global_unseen"]
ACC = ["acc_all", "acc_unseen_strict", "acc_seen", *ORCA_PROTOCOL]
FINAL = ["acc_all", "acc_unseen_strict", "discovered", "acc_seen", *ORCA_PROTOCOL, "loss"]
#: summary.json statuses of a run that ended on its own (its numbers are a result).
FINISHED = ("ok", "diverged", "no_client_update")
SEED_KEY = "run.seed"

__all__ = ["ACC", "FINAL", "FINISHED", "ORCA_PROTOCOL", "column_label", "GRID_JSON", "PLOTS", "REPORT_HTML", "RESULTS_CSV", "SEED_KEY",
           "SUMMARY_MD", "Bench", "Cell", "cells_dir", "finished_summary", "load_bench", "num",
           "read_json", "read_metrics", "results_frame", "runs_dir"]


def column_label(col: str) -> str:
    """A metric's table header: the ORCA protocol's columns say so."""
    return f"{col} (ORCA protocol)" if col in ORCA_PROTOCOL else col


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


def read_metrics(path: Path):
    """metrics.csv as a DataFrame, or None when missing, unreadable or empty."""
    import pandas as pd

    if not path.exists():
        return None
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError):
        return None
    return df if "round" in df.columns and len(df) else None


def num(v: Any) -> float:
    """``v`` as a float; NaN for anything that is not a number."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


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


def _load_cell(bench_dir: Path, entry: dict[str, Any]) -> Cell:
    cid = entry["id"]
    run = runs_dir(bench_dir) / cid
    rec = read_json(record_path(bench_dir, cid)) or {}
    summary = finished_summary(run)
    cell = Cell(cid, dict(entry.get("params", {})), "pending", seed=entry.get("seed"))
    if summary is not None:
        cell.status, cell.summary = summary["status"], summary
        cell.metrics = read_metrics(run / "metrics.csv")
    elif rec.get("status") in ("failed", "interrupted"):
        cell.status = rec["status"]
        cell.error = str(rec.get("error", ""))
    if rec:
        cell.cell_s = rec.get("cell_s")
        cell.exit_code = rec.get("exit_code")
    return cell


def load_bench(bench_dir: Path) -> Bench:
    meta = read_json(bench_dir / GRID_JSON)
    if meta is None or not isinstance(meta.get("cells"), list):
        raise ConfigError(f"{bench_dir / GRID_JSON}: unreadable bench index")
    bench = Bench(bench_dir, str(meta.get("grid_file", "")), list(meta.get("keys", [])))
    bench.cells = [_load_cell(bench_dir, entry) for entry in meta["cells"]]
    return bench


def _best_of_run(c: Cell) -> tuple[float, int | None]:
    """(best acc_all over the run's rounds, its round)."""
    import pandas as pd

    if c.finished and c.metrics is not None and "acc_all" in c.metrics:
        accs = pd.to_numeric(c.metrics["acc_all"], errors="coerce")
        if accs.notna().any():
            i = int(accs.idxmax())
            return float(accs[i]), int(c.metrics["round"][i])
    return math.nan, None


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
        row.update({m: num(final.get(m)) for m in FINAL})
        row["best_acc_all"], row["best_round"] = _best_of_run(c)
        row["wall_s"] = num((c.summary or {}).get("elapsed_s")) if c.finished else math.nan
        row["cell_s"] = num(c.cell_s)
        rows.append(row)
    df = pd.DataFrame(rows)
    for col in ("exit_code", "rounds", "best_round"):
        df[col] = df[col].astype("Int64")
    return df
