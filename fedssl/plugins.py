"""A user's own code named by import path: ``"module:attr"`` or ``"path/to/file.py:attr"``
(an algorithm class, a model function, a dataset function).

``module`` is imported from ``sys.path`` (so its directory must be on ``PYTHONPATH``;
Ray's workers and Flower's app processes inherit the variable). A path to a ``.py``
file instead is loaded from that file, under the module name ``fedssl_user_<stem>``;
:func:`absolute_spec` makes a relative path absolute once, at validation, so every
process (a Ray worker, ``flwr run``'s app process) reads the same file whatever its
working directory.

Importing this module imports neither torch nor Flower.
"""

from __future__ import annotations

import functools
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


def load_callable(value: str) -> Any:
    """The function ``value`` names; :class:`PluginError` if it is not callable."""
    fn = load_object(value)
    if not callable(fn):
        raise PluginError(f"{value!r} is not callable (got {type(fn).__name__})")
    return fn


@functools.lru_cache(maxsize=2)
def load_dataset(value: str) -> tuple[Any, Any, Any, Any, tuple[str, ...]]:
    """A user's dataset: ``value`` names a function of no arguments that returns
    ``(train_x, train_y, test_x, test_y, class_names)``: images as numpy arrays
    [N, H, W] or [N, H, W, C] of values in 0..255 (stored as uint8), labels as 1-d
    integer arrays in [0, len(class_names)). Called once per process (cached);
    :class:`PluginError` names the first thing that is wrong."""
    import numpy as np

    out = load_callable(value)()
    if not (isinstance(out, (tuple, list)) and len(out) == 5):
        raise PluginError(f"{value!r} must return (train_x, train_y, test_x, test_y, class_names), "
                          f"got {type(out).__name__}")
    tx, ty, vx, vy, names = out
    names = tuple(str(n) for n in names)
    if len(names) < 2:
        raise PluginError(f"{value!r}: class_names must name at least 2 classes, got {len(names)}")
    arrays = []
    for split, x, y in (("train", tx, ty), ("test", vx, vy)):
        if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray)):
            raise PluginError(f"{value!r}: {split} images and labels must be numpy arrays")
        if x.ndim not in (3, 4) or len(x) == 0 or (x.ndim == 4 and x.shape[3] not in (1, 3)):
            raise PluginError(f"{value!r}: {split} images must be [N, H, W] or [N, H, W, C] with C 1 or 3 "
                              f"and N > 0, got shape {x.shape}")
        if x.dtype != np.uint8 and (not np.issubdtype(x.dtype, np.number) or x.min() < 0 or x.max() > 255):
            raise PluginError(f"{value!r}: {split} images must hold values in 0..255, got dtype {x.dtype}")
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise PluginError(f"{value!r}: {split} labels must be a 1-d integer array, got {y.dtype} {y.shape}")
        if len(x) != len(y):
            raise PluginError(f"{value!r}: {len(x)} {split} images but {len(y)} {split} labels")
        if y.min() < 0 or y.max() >= len(names):
            raise PluginError(f"{value!r}: {split} labels must be in [0, {len(names)}) (class_names), "
                              f"got {y.min()}..{y.max()}")
        arrays += [(x if x.ndim == 4 else x[..., None]).astype(np.uint8), y.astype(np.int64)]
    if arrays[0].shape[1:] != arrays[2].shape[1:]:
        raise PluginError(f"{value!r}: train images {arrays[0].shape[1:]} and test images "
                          f"{arrays[2].shape[1:]} differ in shape")
    return arrays[0], arrays[1], arrays[2], arrays[3], names
