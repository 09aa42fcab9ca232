"""A grid file parsed into cells, each with its validated config (pure: no processes,
no files written)."""

from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedssl.report.layout import fmt_value, runs_dir
from fedssl.config import (
    Config,
    ConfigError,
    coerce,
    flatten,
    keys,
    own_keys_only,
    read_toml,
    resolve,
    suggest,
    unknown_key,
)
from fedssl.config.validate import list_value

_MAX_ID = 150


@dataclass(frozen=True)
class GridCell:
    id: str
    params: dict[str, Any]  # varied key -> value
    cfg: Config

    @property
    def seed(self) -> int:
        return self.cfg.run.seed


@dataclass
class Grid:
    path: Path
    out: Path
    config_file: Path | None
    base: dict[str, Any]
    keys: list[str]  # varied keys, in grid order (zipped keys expanded)
    cells: list[GridCell] = field(default_factory=list)

    def run_dir(self, cell: GridCell) -> Path:
        return runs_dir(self.out) / cell.id

    def order(self) -> list[GridCell]:
        """Execution order: every configuration once per seed before the next seed,
        so an interrupted grid already covers every configuration."""
        seeds = list(dict.fromkeys(c.seed for c in self.cells))
        return sorted(self.cells, key=lambda c: seeds.index(c.seed))


def cell_id(params: dict[str, Any]) -> str:
    """Readable, stable, filesystem-safe: ``server.strategy=fedavg__run.seed=0``."""
    text = "__".join(f"{k}={fmt_value(v)}" for k, v in params.items()) or "base"
    safe = re.sub(r"[^A-Za-z0-9._=+-]+", "-", text)
    if len(safe) > _MAX_ID or safe != text:
        digest = hashlib.sha1(text.encode()).hexdigest()[:8]
        safe = f"{safe[:_MAX_ID - 9]}-{digest}" if len(safe) > _MAX_ID else f"{safe}-{digest}"
    return safe


def _key_type(path: Path, name: str, where: str) -> type:
    declared = keys()
    if name not in declared:
        raise ConfigError(f"{path} {where}: {unknown_key(name)}")
    if name == "run.out_dir":
        raise ConfigError(f"{path} {where}: run.out_dir is set by fedssl bench (each cell runs in "
                          f"DIR/runs/<cell>); remove it")
    return declared[name].type


def _typed(name: str, value: Any, typ: type, where: str) -> Any:
    """``value`` as ``typ``; a list for a list key (run.tracking) is stored comma-separated."""
    return coerce(name, list_value(name, value, where) if keys()[name].meta["each"] else value, typ, where)


def _read_tables(path: Path) -> dict[str, Any]:
    raw = read_toml(path)
    for table in raw:
        if table not in ("base", "axes"):
            hint = suggest(table, ["base", "axes"]).replace("'base'", "[base]").replace("'axes'", "[axes]")
            raise ConfigError(f"{path}: unknown table or key {table!r}; a grid file has [base] and "
                              f"[axes]{hint}")
    for table in ("base", "axes"):
        if not isinstance(raw.get(table, {}), dict):
            raise ConfigError(f"{path}: {table} must be a table ([{table}])")
    return raw


def _base(path: Path, table: dict[str, Any]) -> tuple[dict[str, Any], Path | None]:
    """``[base]`` keys (typed) and its optional ``config`` file."""
    base = flatten(table)
    config_file = None
    if "config" in base:
        ref = base.pop("config")
        if not isinstance(ref, str) or not ref:
            raise ConfigError(f"{path} [base]: config must be a file name, got {ref!r}")
        config_file = (path.parent / ref) if not Path(ref).is_absolute() else Path(ref)
        if not config_file.is_file():
            raise ConfigError(f"{path} [base]: config = {ref!r}: file not found ({config_file})")
    typed = {k: _typed(k, v, _key_type(path, k, "[base]"), f"{path} [base]") for k, v in base.items()}
    return typed, config_file


def _axis_rows(path: Path, spec: str, names: list[str], values: Any) -> list[tuple[Any, ...]]:
    where = f"[axes] {spec!r}"
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{path} {where}: expected a non-empty list of values, got {values!r}")
    rows: list[tuple[Any, ...]] = []
    for v in values:
        if len(names) > 1 and (not isinstance(v, list) or len(v) != len(names)):
            raise ConfigError(f"{path} {where}: each value must be a list of {len(names)} "
                              f"values ({' + '.join(names)}), got {v!r}")
        items = v if len(names) > 1 else [v]
        row = tuple(_typed(k, x, keys()[k].type, f"{path} {where}") for k, x in zip(names, items))
        if row in rows:
            raise ConfigError(f"{path} {where}: value {v!r} is listed twice")
        rows.append(row)
    return rows


def _axes(path: Path, table: dict[str, Any], base: dict[str, Any]) -> list[tuple[list[str], list[tuple]]]:
    axes: list[tuple[list[str], list[tuple[Any, ...]]]] = []
    varied: list[str] = []
    for spec, values in _axis_items(table):
        names = [k.strip() for k in spec.split("+")]
        for k in names:
            _key_type(path, k, "[axes]")
            if k in varied or names.count(k) > 1:
                raise ConfigError(f"{path} [axes]: {k!r} is varied twice")
            if k in base:
                raise ConfigError(f"{path}: {k!r} is both in [base] and [axes]; keep one")
        axes.append((names, _axis_rows(path, spec, names, values)))
        varied += names
    return axes


def load_grid(path: str | Path, out: str | Path) -> Grid:
    """Parse and validate the grid file; ConfigError naming the file, key and value."""
    path, out = Path(path), Path(out).resolve()
    raw = _read_tables(path)
    base, config_file = _base(path, raw.get("base", {}))
    axes = _axes(path, raw.get("axes", {}), base)
    grid = Grid(path, out, config_file, base, [k for names, _ in axes for k in names])
    ids: dict[str, dict[str, Any]] = {}
    for combo in itertools.product(*[rows for _, rows in axes]):
        params: dict[str, Any] = {}
        for (names, _), row in zip(axes, combo):
            params.update(zip(names, row))
        cid = cell_id(params)
        if cid in ids:  # two values that differ only in unsafe characters
            raise ConfigError(f"{path}: cells {ids[cid]} and {params} map to the same directory {cid!r}")
        ids[cid] = params
        # a key of an algorithm's own section applies to that algorithm's cells only
        overrides = own_keys_only({**base, **params, "run.out_dir": str(runs_dir(out) / cid)})
        try:  # the schema validates each cell; the bench adds no checks of its own
            cfg = resolve(str(config_file) if config_file else None, overrides)
        except ConfigError as e:
            raise ConfigError(f"{path}: cell {cid}: {e}") from None
        grid.cells.append(GridCell(cid, params, cfg))
    return grid


def _axis_items(axes: dict[str, Any]) -> list[tuple[str, Any]]:
    """``[axes]`` entries; unquoted dotted keys (nested tables) are flattened."""
    out: list[tuple[str, Any]] = []
    for k, v in axes.items():
        if isinstance(v, dict):
            out += [(f"{k}.{kk}", vv) for kk, vv in _axis_items(v)]
        else:
            out.append((k, v))
    return out
