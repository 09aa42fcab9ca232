"""Constructor arguments written in one config string: ``"a = 1, b = 'x', c = [1, 2]"``.

Used by ``server.params`` (a strategy's arguments) and ``data.partition_params`` (a
Flower Datasets partitioner's), which are checked against the class's signature by
:func:`accepted_params` and :func:`required_params`. Values are TOML values, so nested lists (a Flower
``DistributionPartitioner``'s ``distribution_array``) work too.
"""

from __future__ import annotations

import inspect
import re
import tomllib
from typing import Any

from fedssl.config.validate import ConfigError


def parse_params(text: str, key: str = "server.params") -> dict[str, Any]:
    """``"a = 1, b = 'x'"`` -> {'a': 1, 'b': 'x'}; ConfigError (one line, naming ``key``)
    when malformed."""
    if not text.strip():
        return {}
    try:  # the whole text as a TOML inline table: handles nested lists and quoted commas
        return dict(tomllib.loads(f"v = {{{text}}}")["v"])
    except tomllib.TOMLDecodeError:
        pass
    # Not a valid table: find the first bad item, for a message that names it.
    for item in filter(None, (p.strip() for p in re.split(r",(?![^\[]*\])", text))):
        name, eq, value = (x.strip() for x in item.partition("="))
        if not eq or not name.isidentifier():
            raise ConfigError(f"{key}: expected 'name = value', got {item!r}")
        try:
            tomllib.loads(f"v = {value}")
        except tomllib.TOMLDecodeError:
            raise ConfigError(f"{key}: {name}: {value!r} is not a TOML value "
                              f"(quote strings: {name} = '{value}')") from None
    raise ConfigError(f"{key}: not a list of 'name = value' pairs: {text!r}")


def accepted_params(cls: type) -> set[str]:
    """Keyword arguments ``cls(...)`` takes; a ``**kwargs`` passed on to the base class
    (a user's subclass of FedAvg, say) adds the base class's."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass is object:
            continue
        params = inspect.signature(vars(klass)["__init__"]).parameters.values()
        names |= {p.name for p in params if p.name != "self"
                  and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names


def required_params(cls: type) -> set[str]:
    """Arguments of ``cls.__init__`` without a default."""
    params = inspect.signature(cls).parameters.values()
    return {p.name for p in params if p.name != "self" and p.default is p.empty
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
