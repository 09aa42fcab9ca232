"""``run_experiment``: one experiment as an in-process Flower simulation (Ray backend).

It sits above the core and the apps: it wires fedssl's ServerApp and ClientApp together
and starts Flower's Simulation Engine; nothing below imports it (the import-linter
contracts in pyproject.toml say so). Flower, Ray and the apps are imported when a run
starts, not with this module, so that the commands that import it (``fedssl config``,
``--help``) stay fast.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any

from fedssl.config import Config, ConfigError
from fedssl.data import client_shard
from fedssl.local_ray import WARM_RAY_ENV, local_ray_resources, usable_cpus
from fedssl.runlog import RunError
from fedssl.sampling import auto_clients_per_node
from fedssl.stream.stages import check_stages
from fedssl.timing import stamp
from fedssl.tracking import check_trackers


def local_parallelism(cfg: Config) -> int:
    """How many clients train at once on this machine."""
    return max(1, int(usable_cpus() / cfg.federation.num_cpus))


def num_supernodes(cfg: Config, model_bytes: int = 0) -> int:
    n = cfg.data.num_clients
    cpn = cfg.federation.clients_per_node or auto_clients_per_node(n, local_parallelism(cfg), model_bytes)
    return max(1, math.ceil(n / cpn))


def backend_config(cfg: Config) -> dict[str, Any]:
    f = cfg.federation
    init_args: dict[str, Any] = {"logging_level": "ERROR", "log_to_driver": True}
    if f.ray_address or os.environ.get(WARM_RAY_ENV):
        # fedssl bench's warm cluster was started with local_ray_resources(cfg)
        init_args["address"] = f.ray_address or os.environ[WARM_RAY_ENV]
    else:
        init_args["include_dashboard"] = False  # no dashboard processes for a local cluster
        init_args.update(local_ray_resources(cfg))
    return {"client_resources": {"num_cpus": f.num_cpus, "num_gpus": f.num_gpus},
            "init_args": init_args}


def write_partition_counts(cfg: Config, splits: Any) -> None:
    """partition.csv: the clients' label distribution, for the run's report (the driver
    has just partitioned the data to check it; the server itself holds none of it)."""
    from fedssl.data import cached_partition
    from fedssl.data.plot import PARTITION_CSV, counts_csv, label_counts
    from fedssl.runlog import write_atomic

    counts = label_counts(cached_partition(cfg.data, cfg.run.seed), splits.train_y, splits.num_classes)
    write_atomic(Path(cfg.run.out_dir) / PARTITION_CSV, counts_csv(counts))


def check_inputs(cfg: Config, resume: bool) -> None:
    """Bad data, a missing tracker package or an unreachable tracking server and a bad
    checkpoint to resume from fail here, before Ray or Flower start. The data loaded
    and partitioned here is this process's cache."""
    stamp("driver: run_experiment")
    check_trackers(cfg)
    if resume:
        from fedssl.runlog import load_checkpoint

        load_checkpoint(Path(cfg.run.out_dir))
    splits, _ = client_shard(cfg.data, cfg.run.seed, 0)
    check_stages(cfg)  # an incremental run's stages must fit the dataset
    write_partition_counts(cfg, splits)
    stamp("driver: dataset loaded and partitioned")


def run_experiment(cfg: Config, resume: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Run ``cfg`` to completion (or resume it) and return its summary.json."""
    check_inputs(cfg, resume)  # and bad strategy settings fail in ServerSetup, before Ray starts

    import ray
    from flwr.simulation import run_simulation

    from fedssl.client.app import make_client_app
    from fedssl.flower_compat import prompt_shutdown
    from fedssl.models import state_nbytes
    from fedssl.server.app import make_server_app
    from fedssl.server.loop import ServerSetup

    stamp("driver: Flower, Ray and the apps imported")
    setup = ServerSetup(cfg)  # the test split, the initial model and the strategy, once
    stamp("driver: server set-up (test split, model, strategy)")

    prompt_shutdown()
    logging.getLogger("flwr").setLevel(logging.WARNING if quiet else logging.INFO)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    flwr_log = logging.getLogger("flwr")
    level = flwr_log.level
    flwr_log.setLevel(logging.ERROR)  # silence run_simulation's deprecation notice
    crash: Exception | None = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run_simulation(
                server_app=make_server_app(cfg, resume=resume, quiet=quiet, setup=setup),
                client_app=make_client_app(cfg),
                num_supernodes=num_supernodes(cfg, state_nbytes(setup.model)),
                backend_config=backend_config(cfg),
            )
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - the ServerApp crashed (run_simulation re-raises it)
        crash = e
    finally:
        flwr_log.setLevel(level)
        if ray.is_initialized():
            ray.shutdown()
        stamp("driver: simulation ended, Ray shut down")
    summary_path = Path(cfg.run.out_dir) / "summary.json"
    if not summary_path.exists():
        why = f" ({type(crash).__name__}: {str(crash).strip().splitlines()[0] if str(crash).strip() else ''})" \
            if crash else ""
        raise RunError(f"the simulation ended without writing {summary_path}{why}; see the log above")
    return json.loads(summary_path.read_text())
