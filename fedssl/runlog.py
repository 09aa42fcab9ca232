"""A run's files: metrics.csv, summary.json, config.toml and the checkpoint.

Every file is written atomically (temp file in the same directory, then rename), so
a crash or a full disk leaves the previous version intact.

The checkpoint is one safetensors file: the arrays as tensors, everything else as JSON
in its header metadata, with a format version. ``--resume`` deserialises no Python objects.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import tempfile
import uuid
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from fedssl.config import Config, ConfigError


class RunError(ConfigError):
    """A run that ended without its results (one line; the CLI exits 2)."""


CONTRACT_COLUMNS = ["round", "loss", "acc_all", "acc_seen", "acc_unseen", "acc_local_unseen",
                    "acc_global_unseen", "wall_s"]
# open world under one matching over all samples (fedssl.metrics.strict_openworld): first
# after the contract columns, since the unseen-only matching above can credit absorption
STRICT_COLUMNS = ("acc_unseen_strict", "discovered", "absorbed_")
ROUND_COLUMNS = ["clients", "rejected_updates", "status"]  # always written, after the strict ones
CHECKPOINT = "checkpoint.safetensors"
CHECKPOINT_FORMAT = "fedssl-checkpoint"
CHECKPOINT_VERSION = 1
RUN_ID_LINE = "# fedssl run id: "  # config.toml's first line (a comment: the config stays loadable)


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
    """CSV text with the contract columns first, then the all-sample matching's
    open-world columns, then ``clients, rejected_updates, status``, then per-class
    accuracies and the rest."""
    def order(k: str) -> tuple[int, int, str]:
        strict = next((i for i, p in enumerate(STRICT_COLUMNS) if k.startswith(p)), None)
        if strict is not None:
            return strict, len(k), k
        if k in ROUND_COLUMNS:
            return len(STRICT_COLUMNS), ROUND_COLUMNS.index(k), k
        return len(STRICT_COLUMNS) + 1 + (not k.startswith("acc_class_")), len(k), k

    fields = CONTRACT_COLUMNS + sorted({k for r in rows for k in r if k not in CONTRACT_COLUMNS} | set(ROUND_COLUMNS),
                                       key=order)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore",
                       lineterminator="\n")
    w.writeheader()
    for r in sorted(rows, key=lambda r: r["round"]):
        w.writerow({k: _cell(r.get(k)) for k in fields})
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


def new_run_id() -> str:
    return uuid.uuid4().hex


def write_config(out_dir: Path, config_toml: str, run_id: str) -> None:
    write_atomic(Path(out_dir) / "config.toml", f"{RUN_ID_LINE}{run_id}\n{config_toml}")


def holds_run(out_dir: str | Path) -> bool:
    """Whether ``out_dir`` holds (part of) a run: any of its files or client state."""
    out = Path(out_dir)
    return any((out / n).exists() for n in ("metrics.csv", "summary.json", "config.toml", CHECKPOINT,
                                             "checkpoint.pt")) or any((out / "client_state").glob("*"))


def prepare_fresh(cfg: Config, overwrite: bool = False) -> Config:
    """``cfg`` with an absolute ``run.out_dir`` that holds no run (an existing one is an
    error, or removed when ``overwrite``)."""
    out = Path(cfg.run.out_dir).resolve()
    if holds_run(out):
        if not overwrite:
            raise ConfigError(f"{out} already holds a run; pass --overwrite to replace it "
                              f"or --resume {out} to continue it")
        shutil.rmtree(out)
    return cfg.replace(**{"run.out_dir": str(out)})


def _split(obj: Any, arrays: dict[str, np.ndarray], path: str) -> Any:
    """JSON-able copy of ``obj`` with every array replaced by {"__array__": key}."""
    if isinstance(obj, np.ndarray) or hasattr(obj, "numpy") and not isinstance(obj, (str, bytes)):
        arrays[path] = np.asarray(obj if isinstance(obj, np.ndarray) else obj.numpy(), order="C")
        return {"__array__": path}
    if isinstance(obj, dict):
        return {str(k): _split(v, arrays, f"{path}/{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_split(v, arrays, f"{path}/{i}") for i, v in enumerate(obj)]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"checkpoint cannot hold {type(obj).__name__} at {path}")


def _join(obj: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__array__"}:
            return arrays[obj["__array__"]]
        return {k: _join(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_join(v, arrays) for v in obj]
    return obj


def _crc(arrays: dict[str, np.ndarray]) -> str:
    crc = 0
    for k in sorted(arrays):
        crc = zlib.crc32(np.ascontiguousarray(arrays[k]).tobytes(), zlib.crc32(k.encode(), crc))
    return f"{crc:08x}"


# safetensors is imported where a checkpoint is read or written: `fedssl node` imports
# this module through the CLI in the SuperNode image, which carries neither it nor torch.
def save_checkpoint(out_dir: Path, state: dict[str, Any]) -> None:
    from safetensors.numpy import save as st_save

    arrays: dict[str, np.ndarray] = {}
    rest = _split(state, arrays, "")
    meta = {"format": CHECKPOINT_FORMAT, "version": str(CHECKPOINT_VERSION), "state": json.dumps(rest),
            "crc32": _crc(arrays)}
    write_atomic(Path(out_dir) / CHECKPOINT, st_save(arrays, metadata=meta))


def load_checkpoint(out_dir: Path) -> dict[str, Any] | None:
    """The saved state, None if there is no checkpoint; ConfigError (one line) if the
    file is corrupt, truncated, of an unknown format version, or an old checkpoint.pt."""
    p = Path(out_dir) / CHECKPOINT
    if not p.exists():
        if (Path(out_dir) / "checkpoint.pt").exists():
            raise ConfigError(f"{Path(out_dir) / 'checkpoint.pt'}: a checkpoint of an older "
                              "fedssl; it is not loaded (start the run again)")
        return None
    try:
        data = p.read_bytes()
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + n]) if 0 < n <= len(data) - 8 else None
        meta = (header or {}).get("__metadata__") or {}
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: unreadable checkpoint ({e})") from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{p}: not a fedssl checkpoint (corrupt or truncated)")
    if meta.get("version") != str(CHECKPOINT_VERSION):
        raise ConfigError(f"{p}: checkpoint format version {meta.get('version')!r} is not supported "
                          f"(this fedssl reads version {CHECKPOINT_VERSION})")
    from safetensors import SafetensorError
    from safetensors.numpy import load as st_load

    try:
        arrays = st_load(data)
        if meta.get("crc32") != _crc(arrays):
            raise ValueError("checksum mismatch")
        return _join(json.loads(meta["state"]), arrays)
    except (SafetensorError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{p}: corrupt checkpoint ({str(e).splitlines()[0] if str(e) else e!r})") from None
