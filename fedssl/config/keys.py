"""How a config key is declared: :func:`key` (a shared key, in :mod:`fedssl.config.schema`)
and :func:`param` (an algorithm's own key, in a :class:`Params` dataclass in the
algorithm's file), and :class:`Key`, a declared key as validation and the generators see
it. This module knows no section and no algorithm, so an algorithm file can declare its
parameters without importing the rest of the config (or torch, or Flower).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedssl.plugins import absolute_spec


def key(default: Any, help: str, *, choices: Sequence[str] | Callable[[], Sequence[str]] | None = None,
        gt: float | None = None, ge: float | None = None, lt: float | None = None,
        le: float | None = None, each: bool = False, norm: Callable[[Any], Any] | None = None,
        check: Callable[[Any], str | None] | None = None, flwr: Any = None, plugin: str = "") -> Any:
    """Declare one key. ``choices``: allowed values (or a function returning them);
    ``each``: the value is a comma-separated list, each item in ``choices``;
    ``gt/ge/lt/le``: the numeric range; ``norm``: normalises the value once, at
    validation, so every reader sees the same form; ``check``: any other test of the value
    alone, returning an error text (or None when fine), e.g. an import path that must
    resolve; ``flwr``: a different default in ``[tool.flwr.app.config]``; ``plugin``: besides
    ``choices``, a user's ``"module:<plugin>"`` (e.g. ``plugin="Class"``) (see :mod:`fedssl.plugins`; a relative file
    path is made absolute)."""
    if plugin:
        norm = absolute_spec
    meta = {"help": help, "choices": choices, "gt": gt, "ge": ge, "lt": lt, "le": le,
            "each": each, "norm": norm, "check": check, "flwr": flwr, "plugin": plugin}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Params:
    """Base of an algorithm's own parameters, the keys of its ``[client.<name>]``
    section. A subclass is a frozen dataclass whose fields are declared with
    :func:`param`, one line each (type, default, help, range)."""


#: declares one field of a :class:`Params` subclass (the same as :func:`key`)
param = key


def section_of(algorithm: type) -> str:
    """The ``[client.<name>]`` section of an algorithm class: its registered name, or
    its lower-cased class name for a user's class."""
    return str(vars(algorithm).get("name") or algorithm.__name__.lower())


@dataclass(frozen=True)
class Key:
    """One declared key, as the generators see it."""

    name: str  # dotted: "data.alpha"
    type: type
    default: Any
    help: str
    meta: dict[str, Any]

    @property
    def choices(self) -> tuple[str, ...] | None:
        c = self.meta["choices"]
        return tuple(c() if callable(c) else c) if c is not None else None

    @property
    def flwr_default(self) -> Any:
        return self.default if self.meta["flwr"] is None else self.meta["flwr"]

    def range_text(self) -> str:
        """``"> 0"``, ``"in (0, 1]"`` ... or "" when unbounded."""
        m = self.meta
        lo = (f"({m['gt']}" if m["gt"] is not None else f"[{m['ge']}" if m["ge"] is not None else None)
        hi = (f"{m['lt']})" if m["lt"] is not None else f"{m['le']}]" if m["le"] is not None else None)
        if lo and hi:
            return f"in {lo}, {hi}"
        if lo:
            return ("> " if lo[0] == "(" else ">= ") + lo[1:]
        if hi:
            return ("< " if hi[-1] == ")" else "<= ") + hi[:-1]
        return ""


_TYPES = {"str": str, "int": int, "float": float, "bool": bool}


def fields_of(section: str, cls: type) -> dict[str, Key]:
    out = {}
    for f in dataclasses.fields(cls):
        typ = f.type if isinstance(f.type, type) else _TYPES.get(str(f.type))
        if typ is None or typ not in _TYPES.values() or "help" not in f.metadata:
            raise TypeError(f"{cls.__qualname__}.{f.name}: declare it as `name: str|int|float|bool = "
                            f"param(default, help, ...)`")
        out[f"{section}.{f.name}"] = Key(f"{section}.{f.name}", typ, f.default, f.metadata["help"],
                                         dict(f.metadata))
    return out


def algorithm_keys(algorithm: Any) -> dict[str, Key]:
    """The keys of one algorithm's own section, ``client.<name>.<key>``."""
    return fields_of(f"client.{section_of(algorithm)}", algorithm.params_class)
