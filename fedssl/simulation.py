"""``run_experiment``: one experiment as an in-process Flower simulation.

This is fedssl's one documented edge module: the core does not import its adapters
(``server/``, ``client/``, ``strategies/``) or Flower's runtime, except here, lazily,
so that ``fedssl run`` and the benchmarks keep one entry point
(``[tool.importlinter]`` in pyproject.toml lists this exception). Nothing in the apps
imports this module back: what they share with it lives in ``fedssl.local_ray`` and
``fedssl.runlog``.
"""

from __future__ import annotations

from typing import Any

from fedssl.config import Config


def run_experiment(cfg: Config, resume: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Run ``cfg`` to completion (or resume it) and return its summary.json."""
    from fedssl.tracking import check_trackers
    from fedssl.server.simulation import run_experiment as run

    check_trackers(cfg)  # a missing tracker package or an unreachable server: before Ray starts
    return run(cfg, resume=resume, quiet=quiet)
