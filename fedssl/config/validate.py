"""Validation of single keys, generated from the schema, and the reading of config files
and ``--set`` flags. The checks that span keys, and the :class:`Config` they build, are in
:mod:`fedssl.config.experiment`.

Every error is a :class:`ConfigError` whose message is one line naming the key (and the
file, when there is one) and the bad value, with a did-you-mean for near misses.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
from pathlib import Path
from typing import Any

from fedssl.config.keys import Key, Params, algorithm_keys, section_of
from fedssl.config.schema import ClientConfig, DataConfig, keys, shared_keys
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


def require(ok: bool, msg: str) -> None:
    """ConfigError(``msg``) unless ``ok``."""
    if not ok:
        raise ConfigError(msg)


def check_class_counts(d: DataConfig, k: int) -> None:
    """Class counts against the dataset's ``k`` classes (also the partitioner's precondition)."""
    require(0 <= d.seen_classes <= k, f"data.seen_classes must be in [1, {k}] (or 0 for all), "
             f"got {d.seen_classes}")
    require(1 <= d.classes_per_client <= k,
             f"data.classes_per_client must be in [1, {k}], got {d.classes_per_client}")
    unseen = k - (d.seen_classes or k)
    require(0 <= d.globally_unseen <= unseen, f"data.globally_unseen must be in [0, {unseen}] (the number "
             f"of unseen classes), got {d.globally_unseen}")


FLWR_PARTITION = "flwr:"  # data.partition = "flwr:<Flower Datasets partitioner class>"


def stream_lists(s: Any) -> tuple[list[str], list[int]]:
    """(domains, severities as listed: empty, one for all, or one per domain) of a
    ``[stream]`` section; ConfigError on a severity that is not an integer."""
    domains = [d for d in s.domains.split(",") if d]
    try:
        sev = [int(v) for v in s.severities.split(",") if v]
    except ValueError:
        raise ConfigError(f"stream.severities: expected comma-separated integers 1..5, got {s.severities!r}") from None
    return domains, sev


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


def foreign_key(name: str, own: str, algorithm: str, source: str) -> ConfigError:
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
