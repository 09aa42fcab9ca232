"""Validation generated from the schema, plus the few checks that span keys.

Every error is a :class:`ConfigError` whose message is one line naming the key (and the
file, when there is one) and the bad value, with a did-you-mean for near misses.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedssl.config.schema import SECTIONS, Config, DataConfig, Key, keys
from fedssl.registry import ALGORITHM_NAMES


class ConfigError(ValueError):
    """Bad user input: the message is one line that names the key/file and value."""


def suggest(name: str, candidates: Any) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate, or ""."""
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_key(name: str, source: str = "") -> ConfigError:
    where = f" in {source}" if source else ""
    return ConfigError(f"unknown config key {name!r}{where}{suggest(name, keys())}")


def coerce(name: str, value: Any, typ: type, source: str = "") -> Any:
    """``value`` as ``typ``; strings (``--set``, Flower run config) are parsed as TOML."""
    where = f" in {source}" if source else ""
    if isinstance(value, str) and typ is not str:
        text = value.strip()
        try:
            if typ is bool:
                if text.lower() not in ("true", "false"):
                    raise ValueError
                return text.lower() == "true"
            value = tomllib.loads(f"v = {text}")["v"]
        except (ValueError, tomllib.TOMLDecodeError):
            raise ConfigError(f"{name}{where}: expected {typ.__name__}, got {value!r}") from None
    if typ is str and isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        try:
            return tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            raise ConfigError(f"{name}{where}: badly quoted string {value!r}") from None
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise ConfigError(f"{name}{where}: expected {typ.__name__}, got {value!r} ({type(value).__name__})")
    return value


def list_value(name: str, value: Any, source: str = "") -> Any:
    """A list, or the text of a TOML list, as one comma-separated string (Flower's run
    config holds scalars only); anything else unchanged."""
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            raise ConfigError(f"{name}{' in ' + source if source else ''}: not a TOML list: {value!r}") from None
    if isinstance(value, (list, tuple)):
        if not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{name}: expected a list of strings, got {value!r}")
        return ",".join(value)
    return value


def check_key(k: Key, value: Any, source: str = "") -> Any:
    """Coerce, normalise and range/choice-check one value; returns the stored form."""
    if k.meta["each"]:  # a list key: a TOML list (in a file or --set) is stored comma-separated
        value = list_value(k.name, value, source)
    value = coerce(k.name, value, k.type, source)
    if k.meta["norm"] is not None:
        value = k.meta["norm"](value)
    choices = k.choices
    if choices is not None:
        items = value.split(",") if k.meta["each"] else [value]
        if k.meta["each"] and value == "" == k.default:  # an empty list, where the default is empty
            items = []
        for item in items:
            if item not in choices:
                raise ConfigError(f"{k.name}: unknown value {item!r}{suggest(item, choices)} "
                                  f"(choose from {', '.join(choices)})")
    rng = k.range_text()
    m = k.meta
    if rng and not ((m["gt"] is None or value > m["gt"]) and (m["ge"] is None or value >= m["ge"])
                    and (m["lt"] is None or value < m["lt"]) and (m["le"] is None or value <= m["le"])):
        raise ConfigError(f"{k.name} must be {rng}, got {value}")
    problem = k.meta["check"](value) if k.meta["check"] is not None else None
    if problem:
        raise ConfigError(f"{k.name}: {problem}")
    return value


def _require(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


def check_class_counts(d: DataConfig, k: int) -> None:
    """Class counts against the dataset's ``k`` classes (also the partitioner's precondition)."""
    _require(0 <= d.seen_classes <= k, f"data.seen_classes must be in [1, {k}] (or 0 for all), "
             f"got {d.seen_classes}")
    _require(1 <= d.classes_per_client <= k,
             f"data.classes_per_client must be in [1, {k}], got {d.classes_per_client}")
    unseen = k - (d.seen_classes or k)
    _require(0 <= d.globally_unseen <= unseen, f"data.globally_unseen must be in [0, {unseen}] (the number "
             f"of unseen classes), got {d.globally_unseen}")


def _check_classes(cfg: Config) -> None:
    d = cfg.data
    check_class_counts(d, cfg.num_classes)
    _require(d.labeled_ratio > 0 or d.server_labels_per_class > 0,
             "data.labeled_ratio must be in (0, 1] (0 only with data.server_labels_per_class > 0), "
             f"got {d.labeled_ratio}")
    _require(d.server_labels_per_class == 0 or d.partition != "openworld",
             "data.server_labels_per_class is not supported with data.partition=openworld "
             "(the server would need labels of unseen classes); set it to 0")
    _require(d.globally_unseen == 0 or d.partition == "openworld",
             f"data.globally_unseen={d.globally_unseen} only applies with data.partition=openworld "
             f"(got partition={d.partition!r})")


def _check_clients(cfg: Config) -> None:
    f, n = cfg.federation, cfg.data.num_clients
    _require(f.min_clients <= n, f"federation.min_clients ({f.min_clients}) exceeds data.num_clients ({n})")
    try:
        ids = fault_clients(cfg)
    except ValueError:
        raise ConfigError(f"faults.clients: expected comma-separated ids, got {cfg.faults.clients!r}") from None
    modes = cfg.faults.mode.split(",")
    _require(len(modes) == 1 or len(modes) == len(ids),
             f"faults.mode lists {len(modes)} modes but faults.clients lists {len(ids)} clients")
    _require(all(0 <= i < n for i in ids), f"faults.clients: ids must be in [0, {n}), got {cfg.faults.clients!r}")


def _check_client(cfg: Config) -> None:
    c = cfg.client
    _require(c.local_steps > 0 or c.local_epochs > 0, "client.local_steps or client.local_epochs must be > 0")
    _require(bool(cfg.run.out_dir), "run.out_dir must not be empty")
    if ALGORITHM_NAMES[c.algorithm]:  # open world
        k = cfg.num_classes
        _require(cfg.num_seen < k, f"client.algorithm={c.algorithm} needs unseen classes: "
                 f"set data.seen_classes below {k} (got {cfg.num_seen})")


# Checks that span keys; single-key checks come from the schema declarations.
CROSS_CHECKS: list[Callable[[Config], None]] = [_check_classes, _check_clients, _check_client]


def fault_clients(cfg: Config) -> list[int]:
    return [int(x) for x in cfg.faults.clients.split(",") if x]


def from_flat(flat: dict[str, Any], source: str = "") -> Config:
    """Build a validated Config from dotted keys; unknown keys are errors."""
    declared = keys()
    sections: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for name, value in flat.items():
        if name not in declared:
            raise unknown_key(name, source)
        section, _, short = name.partition(".")
        sections[section][short] = check_key(declared[name], value, source)
    cfg = Config(**{s: SECTIONS[s](**kw) for s, kw in sections.items()})
    for check in CROSS_CHECKS:
        check(cfg)
    return cfg


def flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in table.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, name + "."))
        else:
            out[name] = v
    return out


def read_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        return tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: invalid TOML ({e})") from None


def parse_set(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name.strip():
            raise ConfigError(f"--set expects section.key=value, got {item!r}")
        out[name.strip()] = value.strip()
    return out


def checked_keys(flat: dict[str, Any], source: str) -> dict[str, Any]:
    """``flat`` unchanged if every key is declared, else the one-line unknown-key error."""
    declared = keys()
    for name in flat:
        if name not in declared:
            raise unknown_key(name, source)
    return flat


def resolve(config_file: str | None = None, overrides: dict[str, Any] | None = None,
            base: dict[str, Any] | None = None) -> Config:
    """Defaults <- base <- config file <- overrides (``--set``), validated."""
    flat = Config().to_flat()
    flat.update(base or {})
    if config_file:
        flat.update(checked_keys(flatten(read_toml(config_file)), str(config_file)))
    flat.update(checked_keys(overrides or {}, "--set"))
    return from_flat(flat, source=str(config_file or ""))
