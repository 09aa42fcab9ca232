"""Validation generated from the schema, plus the few checks that span keys.

Every error is a :class:`ConfigError` whose message is one line naming the key (and the
file, when there is one) and the bad value, with a did-you-mean for near misses.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedssl.config.schema import (PARTITIONS, SECTIONS, ClientConfig, Config, DataConfig, Key, Params, algorithm_keys, keys,
                                  section_of, shared_keys)
from fedssl.plugins import PluginError, is_import_path
from fedssl.registry import ALGORITHMS


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
    return ",".join(v.strip() for v in value.split(",")) if isinstance(value, str) else value


def check_key(k: Key, value: Any, source: str = "") -> Any:
    """Coerce, normalise and range/choice-check one value; returns the stored form."""
    if k.meta["each"]:  # a list key: a TOML list (in a file or --set) is stored comma-separated
        value = list_value(k.name, value, source)
    value = coerce(k.name, value, k.type, source)
    if k.meta["norm"] is not None:
        value = k.meta["norm"](value)
    choices = k.choices
    if choices is not None and not (k.meta.get("plugin") and is_import_path(value)):
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


FLWR_PARTITION = "flwr:"  # data.partition = "flwr:<Flower Datasets partitioner class>"


def _check_partition(cfg: Config) -> None:
    """fedssl's own scheme, or a Flower Datasets partitioner whose class and arguments are
    checked when the data is split (importing flwr-datasets here would slow ``fedssl config``)."""
    p = cfg.data.partition
    _require(p in PARTITIONS or (p.startswith(FLWR_PARTITION) and p[len(FLWR_PARTITION):].isidentifier()),
             f"data.partition: unknown partition {p!r} (choose from {', '.join(PARTITIONS)}, "
             f"or give 'flwr:<PartitionerClass>')")


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
    if cfg.algorithm_class.open_world:
        k = cfg.num_classes
        _require(cfg.num_seen < k, f"client.algorithm={c.algorithm} needs unseen classes: "
                 f"set data.seen_classes below {k} (got {cfg.num_seen})")


def stream_lists(s: Any) -> tuple[list[str], list[int]]:
    """(domains, severities as listed: empty, one for all, or one per domain) of a
    ``[stream]`` section; ConfigError on a severity that is not an integer."""
    domains = [d for d in s.domains.split(",") if d]
    try:
        sev = [int(v) for v in s.severities.split(",") if v]
    except ValueError:
        raise ConfigError(f"stream.severities: expected comma-separated integers 1..5, got {s.severities!r}") from None
    return domains, sev


def _check_stream(cfg: Config) -> None:
    s = cfg.stream
    if s.stages == 0:
        return
    domains, sev = stream_lists(s)
    _require(len(domains) >= s.stages, f"stream.domains lists {len(domains)} domains for stream.stages="
             f"{s.stages}; give at least one per stage")
    _require(len(sev) in (0, 1, len(domains)) and all(1 <= v <= 5 for v in sev),
             f"stream.severities={s.severities!r}: give one severity in 1..5, or one per domain "
             f"({len(domains)}), or none for the reference's defaults")
    _require(cfg.federation.rounds == s.stages * s.rounds_per_stage,
             f"federation.rounds ({cfg.federation.rounds}) must equal stream.stages x stream.rounds_per_stage "
             f"({s.stages} x {s.rounds_per_stage} = {s.stages * s.rounds_per_stage})")
    _require(cfg.data.partition != "openworld", "stream.stages > 0 is not supported with "
             "data.partition=openworld (unseen classes are not staged); use iid, dirichlet or pathological")


# Checks that span keys; single-key checks come from the schema declarations.
CROSS_CHECKS: list[Callable[[Config], None]] = [_check_partition, _check_classes, _check_clients, _check_client,
                                                _check_stream]


def fault_clients(cfg: Config) -> list[int]:
    return [int(x) for x in cfg.faults.clients.split(",") if x]


def algorithm_class(name: str) -> Any:
    """The algorithm ``client.algorithm`` names, its declarations checked; ConfigError if bad."""
    try:
        cls = ALGORITHMS.load(name)
    except PluginError as e:
        raise ConfigError(f"client.algorithm: {e}") from None
    params = getattr(cls, "params_class", None)
    if not (isinstance(params, type) and issubclass(params, Params) and dataclasses.is_dataclass(params)):
        raise ConfigError(f"client.algorithm: {name!r}: params_class must be a frozen dataclass "
                          "subclassing fedssl.algorithms.base.Params")
    try:
        algorithm_keys(cls)
    except TypeError as e:
        raise ConfigError(f"client.algorithm: {name!r}: {e}") from None
    shared = {f.name for f in dataclasses.fields(ClientConfig)} - {"algorithm"}
    bad = sorted(set(cls.client_defaults) - shared)
    if bad:
        raise ConfigError(f"client.algorithm: {name!r}: client_defaults names {bad[0]!r}, not a shared "
                          f"[client] key{suggest(bad[0], shared)}")
    return cls


def own_keys_only(flat: dict[str, Any]) -> dict[str, Any]:
    """``flat`` without the keys of built-in algorithms other than its ``client.algorithm``
    (a bench grid's base and axes may set several algorithms' keys at once)."""
    chosen = section_of(algorithm_class(flat.get("client.algorithm", ClientConfig.algorithm)))
    others = {section_of(ALGORITHMS[n]) for n in ALGORITHMS} - {chosen}
    return {k: v for k, v in flat.items()
            if not (k.startswith("client.") and k.count(".") == 2 and k.split(".")[1] in others)}


def _foreign_key(name: str, own: str, algorithm: str, source: str) -> ConfigError:
    """The error for ``client.<x>.<key>`` outside the chosen algorithm's declared keys."""
    where = f" in {source}" if source else ""
    section = name.rpartition(".")[0]
    if section == "client":  # e.g. client.threshold for client.fixmatch.threshold
        mine = f"{own}.{name.partition('.')[2]}"
        hint = f" (did you mean {mine!r}?)" if mine in algorithm_keys(ALGORITHMS.load(algorithm)) else ""
        return ConfigError(f"unknown config key {name!r}{where}{hint or suggest(name, shared_keys())}")
    if section == own:
        return ConfigError(f"unknown config key {name!r}{where}{suggest(name, keys())}"
                           f" ([{own}] is {algorithm!r}'s own section)")
    if section.partition(".")[2] in {section_of(ALGORITHMS[n]) for n in ALGORITHMS}:
        return ConfigError(f"{name}{where} is a key of algorithm {section.partition('.')[2]!r}, but "
                           f"client.algorithm = {algorithm!r} (its keys are [{own}])")
    return ConfigError(f"unknown config section [{section}]{where} (the chosen algorithm's own "
                       f"section is [{own}])")


def from_flat(flat: dict[str, Any], source: str = "") -> Config:
    """Build a validated Config from dotted keys; unknown keys are errors. A key left
    out takes the chosen algorithm's default (its ``client_defaults`` for a shared
    ``[client]`` key, its ``params_class`` for its own ``client.<name>.<key>``)."""
    shared = shared_keys()
    sections: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    own_flat: dict[str, Any] = {}
    for name, value in flat.items():
        if name in shared:
            section, _, short = name.partition(".")
            sections[section][short] = check_key(shared[name], value, source)
        elif name.startswith("client.") and name.count(".") == 2:
            own_flat[name] = value
        elif name.startswith("client.") and name.count(".") == 1:
            own_flat[name] = value  # perhaps one of the algorithm's keys without its section
        else:
            raise unknown_key(name, source)
    name = sections["client"].get("algorithm", ClientConfig.algorithm)
    cls = algorithm_class(name)
    for short, value in cls.client_defaults.items():
        if short not in sections["client"]:
            sections["client"][short] = check_key(shared[f"client.{short}"], value, f"{name}'s client_defaults")
    declared, own = algorithm_keys(cls), f"client.{section_of(cls)}"
    params = {}
    for key_name, value in own_flat.items():
        if key_name not in declared:
            raise _foreign_key(key_name, own, name, source)
        params[key_name.rpartition(".")[2]] = check_key(declared[key_name], value, source)
    cfg = Config(**{s: SECTIONS[s](**kw) for s, kw in sections.items()}, algo_params=cls.params_class(**params))
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
    """``flat`` unchanged if every key is declared, else the one-line unknown-key error.
    ``client.<name>.<key>`` is checked later, against the chosen algorithm."""
    declared = shared_keys()
    for name in flat:
        if name not in declared and not name.startswith("client."):
            raise unknown_key(name, source)
    return flat


def resolve(config_file: str | None = None, overrides: dict[str, Any] | None = None,
            base: dict[str, Any] | None = None) -> Config:
    """Defaults <- base <- config file <- overrides (``--set``), validated."""
    flat = dict(base or {})
    if config_file:
        flat.update(checked_keys(flatten(read_toml(config_file)), str(config_file)))
    flat.update(checked_keys(overrides or {}, "--set"))
    return from_flat(flat, source=str(config_file or ""))
