"""``run_experiment``: one experiment as an in-process Flower simulation.

This is fedssl's one documented edge module: the core does not import its adapters
(``server/``, ``client/``, ``strategies/``) or Flower's runtime, except here, lazily,
so that ``fedssl run`` and the benchmarks keep one entry point
(``.importlinter`` lists this exception).
"""

from __future__ import annotations

from typing import Any

from fedssl.config import Config, ConfigError


class RunError(ConfigError):
    """A run that ended without its results (one line; the CLI exits 2)."""


def run_experiment(cfg: Config, resume: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Run ``cfg`` to completion (or resume it) and return its summary.json."""
    from server.simulation import run_experiment as run

    return run(cfg, resume=resume, quiet=quiet)
