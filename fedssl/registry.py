"""Name -> class registries. Adding an algorithm or a strategy is adding one file.

Importing this module imports neither torch nor Flower: the registries import their
packages by name on first lookup (and an algorithm file imports no torch either).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator, Mapping
from typing import Any

from fedssl.plugins import PluginError, is_import_path, load_object


class Registry(Mapping[str, Any]):
    """The classes a package's modules declare by name (a class attribute ``name``,
    which a decorator such as :func:`fedssl.algorithms.register` sets), by that name.

    The package's modules are imported on first lookup, so a new file is picked up
    without editing any list, and the modules do not import the registry.
    """

    def __init__(self, kind: str, package: str, base: str = "") -> None:
        self.kind = kind
        self.package = package
        self.base = base  # "module:Class" that a user's class must subclass
        self._items: dict[str, Any] = {}
        self._loaded = False

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        pkg = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(pkg.__path__):
            if info.name.startswith("_"):
                continue
            module = importlib.import_module(f"{self.package}.{info.name}")
            for obj in vars(module).values():  # the classes this module declares, not those it imports
                name = vars(obj).get("name") if isinstance(obj, type) and obj.__module__ == module.__name__ else None
                if name:
                    if name in self._items and self._items[name] is not obj:
                        raise ValueError(f"{self.kind} {name!r} declared twice")
                    self._items[name] = obj

    def __getitem__(self, name: str) -> Any:
        self._load()
        return self._items[name]

    def load(self, name: str) -> Any:
        """A registered name, or a user's ``"module:Class"`` (see :mod:`fedssl.plugins`);
        :class:`~fedssl.plugins.PluginError` (one line) when neither resolves."""
        if not is_import_path(name):
            if name not in self:
                raise PluginError(f"unknown {self.kind} {name!r} (choose from {', '.join(self)}, "
                                  "or give 'module:Class')")
            return self[name]
        obj = load_object(name)
        base = load_object(self.base) if self.base else object
        if not (isinstance(obj, type) and issubclass(obj, base)):
            raise PluginError(f"{name!r} is not a subclass of {base.__module__}.{base.__qualname__}")
        return obj

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(sorted(self._items))

    def __len__(self) -> int:
        self._load()
        return len(self._items)


# Strategy names are declared here so the core can validate a config without
# importing Flower; `strategies/` holds one file per name and checks the list.
STRATEGY_NAMES = ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedossl", "fedadagrad",
                  "fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan", "qfedavg")

#: Local SSL algorithms: one file each in ``fedssl/algorithms/``, which declares
#: everything about it (see :class:`fedssl.algorithms.base.Algorithm`).
ALGORITHMS = Registry("algorithm", "fedssl.algorithms", base="fedssl.algorithms.base:Algorithm")
