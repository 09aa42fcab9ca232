"""Name -> class registries. Adding an algorithm or a strategy is adding one file."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator, Mapping
from typing import Any


class Registry(Mapping[str, Any]):
    """A mapping filled by ``@registry.register("name")`` in the modules of a package.

    The package's modules are imported on first lookup, so a new file is picked up
    without editing any list.
    """

    def __init__(self, kind: str, package: str) -> None:
        self.kind = kind
        self.package = package
        self._items: dict[str, Any] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[Any], Any]:
        def deco(obj: Any) -> Any:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            obj.name = name
            self._items[name] = obj
            return obj

        return deco

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        pkg = importlib.import_module(self.package)
        for mod in pkgutil.iter_modules(pkg.__path__):
            if not mod.name.startswith("_"):
                importlib.import_module(f"{self.package}.{mod.name}")

    def __getitem__(self, name: str) -> Any:
        self._load()
        return self._items[name]

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

# Algorithm names, with whether each needs unseen classes (open world), declared here
# so a config validates without importing torch. Each name is one file in
# `fedssl/algorithms/`, registered by the same name; tests/test_config_schema.py checks
# that this table and the registry agree.
ALGORITHM_NAMES: dict[str, bool] = {
    "supervised": False,
    "fixmatch": False,
    "meanteacher": False,
    "uda": False,
    "shrinkmatch": False,
    "semifl": False,
    "fedsto": False,
    "replay": False,
    "retrain": False,
    "lwf": False,
    "ewc": False,
    "fedmobile": False,
    "orca": True,
    "fedossl": True,
}
