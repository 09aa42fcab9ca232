"""fedssl: federated semi-supervised learning on Flower + Ray.

The Python API (:mod:`fedssl.api`), imported on first use so that ``import fedssl``
and ``fedssl config`` stay fast::

    import fedssl
    result = fedssl.run(**{"federation.rounds": 3, "run.out_dir": "runs/py"})
    result.metrics            # pandas DataFrame, one row per evaluated round
    table = fedssl.bench("examples/quickstart.toml", "runs/bench")

Errors raise :class:`fedssl.ConfigError` with the CLI's one-line message.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fedssl.versions import __version__

if TYPE_CHECKING:
    from fedssl.api import Result, load_result, run
    from fedssl.bench.api import bench
    from fedssl.config import Config, ConfigError

_API = {"run": "fedssl.api", "Result": "fedssl.api", "load_result": "fedssl.api",
        "Config": "fedssl.config", "ConfigError": "fedssl.config"}
__all__ = ["Config", "ConfigError", "Result", "__version__", "bench", "load_result", "run"]


def __getattr__(name: str) -> Any:
    if name == "bench":  # the subpackage, callable: fedssl.bench(grid, out) runs a grid
        return importlib.import_module("fedssl.bench")
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'fedssl' has no attribute {name!r}")
