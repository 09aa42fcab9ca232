"""A user's own code named by import path: ``"module:attr"`` or ``"path/to/file.py:attr"``.

``module`` is imported from ``sys.path`` (so its directory must be on ``PYTHONPATH``;
Ray's workers and Flower's app processes inherit the variable). A path to a ``.py``
file instead is loaded from that file, under the module name ``fedssl_user_<stem>``;
:func:`absolute_spec` makes a relative path absolute once, at validation, so every
process (a Ray worker, ``flwr run``'s app process) reads the same file whatever its
working directory.

Importing this module imports neither torch nor Flower.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any


class PluginError(ValueError):
    """A user's import path that does not resolve: one line naming the path and why."""


def is_import_path(value: str) -> bool:
    """``"module:attr"`` or ``"file.py:attr"`` (not a built-in name)."""
    return ":" in value


def _is_file(module: str) -> bool:
    return module.endswith(".py") or "/" in module or "\\" in module


def absolute_spec(value: str) -> str:
    """``value`` with a relative file path made absolute; a module path unchanged."""
    module, _, attr = value.rpartition(":")
    if not _is_file(module):
        return value
    return f"{Path(module).expanduser().resolve()}:{attr}"


def _import_file(path: str) -> Any:
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise PluginError(f"no such file {str(p)!r}")
    name = f"fedssl_user_{p.stem}"
    cached = sys.modules.get(name)
    if cached is not None and getattr(cached, "__file__", None) == str(p):
        return cached
    spec = importlib.util.spec_from_file_location(name, p)
    if spec is None or spec.loader is None:
        raise PluginError(f"cannot load {str(p)!r} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look classes up by module name
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def load_object(value: str) -> Any:
    """The object ``value`` names; :class:`PluginError` (one line) when it cannot be had."""
    module_name, colon, attr = value.rpartition(":")
    if not colon or not module_name or not attr:
        raise PluginError(f"{value!r} is not 'module:name' or 'path/to/file.py:name'")
    try:
        module = _import_file(module_name) if _is_file(module_name) else importlib.import_module(module_name)
    except PluginError:
        raise
    except Exception as e:  # the user's module itself may raise anything while importing
        first = str(e).splitlines()[0] if str(e) else ""
        raise PluginError(f"cannot import {module_name!r} ({type(e).__name__}: {first})") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise PluginError(f"module {module_name!r} has no attribute {attr!r}") from None
