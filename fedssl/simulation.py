"""``run_experiment``: one experiment as an in-process Flower simulation.

This is fedssl's one documented edge module: the core does not import its adapters
(``server/``, ``client/``, ``strategies/``) or Flower's runtime, except here, lazily,
so that ``fedssl run`` and the benchmarks keep one entry point
(``.importlinter`` lists this exception).
"""

from __future__ import annotations

import os
from typing import Any

from fedssl.config import Config, ConfigError

# Set by ``fedssl bench``'s warm worker for the cells it runs: the address of the Ray
# cluster it keeps warm across cells, started with exactly ``local_ray_resources(cfg)``.
# A cell with ``federation.ray_address`` set ignores it.
WARM_RAY_ENV = "FEDSSL_BENCH_RAY_ADDRESS"


def local_ray_resources(cfg: Config) -> dict[str, int]:
    """The resources of the local Ray cluster a run starts: every CPU this process may
    use (or ``FEDSSL_RAY_CPUS``), and every GPU when the clients ask for GPUs."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    gpus = 0
    if cfg.federation.num_gpus > 0:
        gpus = _gpu_count()
    return {"num_cpus": max(1, int(os.environ.get("FEDSSL_RAY_CPUS", 0)) or cpus), "num_gpus": gpus}


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:
        return 0


class RunError(ConfigError):
    """A run that ended without its results (one line; the CLI exits 2)."""


def run_experiment(cfg: Config, resume: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Run ``cfg`` to completion (or resume it) and return its summary.json."""
    from fedssl.tracking import check_trackers
    from server.simulation import run_experiment as run

    check_trackers(cfg)  # a missing tracker package or an unreachable server: before Ray starts
    return run(cfg, resume=resume, quiet=quiet)
