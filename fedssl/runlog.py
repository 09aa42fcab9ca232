"""A run's files: metrics.csv, summary.json, config.toml and the checkpoint.

Every file is written atomically (temp file in the same directory, then rename), so
a crash or a full disk leaves the previous version intact.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

METRIC_COLUMNS = ["round", "loss", "acc_all", "acc_seen", "acc_unseen", "acc_local_unseen",
                  "acc_global_unseen", "wall_s", "clients", "rejected_updates", "status"]
CHECKPOINT = "checkpoint.pt"


def write_atomic(path: str | Path, data: bytes | str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _cell(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def metrics_csv(rows: list[dict[str, Any]]) -> str:
    """CSV text with the contract columns first, then per-class accuracies."""
    extra = sorted({k for r in rows for k in r if k not in METRIC_COLUMNS},
                   key=lambda k: (not k.startswith("acc_class_"), len(k), k))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS + extra, extrasaction="ignore",
                       lineterminator="\n")
    w.writeheader()
    for r in sorted(rows, key=lambda r: r["round"]):
        w.writerow({k: _cell(r.get(k)) for k in METRIC_COLUMNS + extra})
    return buf.getvalue()


def write_metrics(out_dir: Path, rows: list[dict[str, Any]]) -> None:
    write_atomic(out_dir / "metrics.csv", metrics_csv(rows))


def write_json(path: Path, obj: Any) -> None:
    def clean(o: Any) -> Any:
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        return o

    write_atomic(path, json.dumps(clean(obj), indent=2, sort_keys=False) + "\n")


def save_checkpoint(out_dir: Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    write_atomic(out_dir / CHECKPOINT, buf.getvalue())


def load_checkpoint(out_dir: Path) -> dict[str, Any] | None:
    p = Path(out_dir) / CHECKPOINT
    if not p.exists():
        return None
    return torch.load(p, weights_only=False)
