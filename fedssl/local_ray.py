"""The local Ray cluster a run starts, and the warm one ``fedssl bench`` keeps."""

from __future__ import annotations

import os

from fedssl.config import Config

# Set by ``fedssl bench``'s warm worker for the cells it runs: the address of the Ray
# cluster it keeps warm across cells, started with exactly ``local_ray_resources(cfg)``.
# A cell with ``federation.ray_address`` set ignores it.
WARM_RAY_ENV = "FEDSSL_BENCH_RAY_ADDRESS"


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def local_ray_resources(cfg: Config) -> dict[str, int]:
    """The resources of the local Ray cluster a run starts: every CPU this process may
    use (or ``FEDSSL_RAY_CPUS``), and every GPU when the clients ask for GPUs."""
    cpus = usable_cpus()
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
