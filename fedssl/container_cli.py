"""``fedssl deploy containers``: build (or reuse) the images, export the shards, bring
a federation up in containers (:class:`fedssl.container_run.ContainerFederation`),
``flwr run`` the experiment from this host, and take everything down again."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from fedssl.config import ConfigError
from fedssl.container_run import CONNECTION, ContainerFederation
from fedssl.deploy import DeployError, app_dir


def _config(args: Any) -> tuple[Any, Path]:
    """The run config and the output directory (bad input: ConfigError, exit 2)."""
    from fedssl.deploy.cli import _resolve

    extra: dict[str, Any] = {}
    if args.clients is not None:
        if args.clients < 1:
            raise ConfigError(f"--clients must be >= 1, got {args.clients}")
        extra["data.num_clients"] = args.clients
    cfg = _resolve(args, extra)
    return cfg, Path(args.out or cfg.run.out_dir).resolve()


def _deploy(fed: ContainerFederation, args: Any, echo: Any) -> dict[str, Any] | None:
    """Images, shards, containers, ``flwr run``; returns summary.json (None: build only)."""
    import tempfile

    from fedssl.containers import build_images
    from fedssl.data.export import export_shards

    t0 = time.time()
    build_images(fed.engine, app_dir(), echo, official=args.official_bases)
    echo(f"images ready in {time.time() - t0:.0f} s")
    if args.build_only:
        return None
    cfg = fed.cfg
    with tempfile.TemporaryDirectory() as tmp:
        echo(f"exporting {cfg.data.num_clients} shards ({cfg.data.dataset}, {cfg.data.partition})")
        export_shards(cfg, Path(tmp) / "shards")
        fed.prepare(Path(tmp) / "shards")
    fed.start()
    t1 = time.time()
    echo(f"flwr run {app_dir()} {CONNECTION} --stream  (FLWR_HOME={fed.home}; log: {fed.logs / 'flwr-run.log'})")
    summary = fed.wait_run(fed.start_run(), timeout=args.timeout)
    echo(f"run finished in {time.time() - t1:.0f} s")
    return summary


def cmd_containers(args: Any) -> int:
    """``fedssl deploy containers``: build (or reuse) the images, export the shards,
    bring the federation up, ``flwr run``, and take it down."""
    import signal
    import sys

    from fedssl.containers import BuildError, find_engine

    cfg, out = _config(args)
    engine = find_engine(args.engine)  # exit 2 naming the packages to install, before anything else
    if (out / "metrics.csv").exists() or (out / "summary.json").exists():
        if not args.overwrite:
            raise ConfigError(f"{out} already holds a run; pass --overwrite to replace it")
        shutil.rmtree(out)
    echo = (lambda s: None) if args.quiet else (lambda s: print(f"[containers] {s}", file=sys.stderr, flush=True))
    echo(f"engine: {engine.describe()}")

    def _term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, _term)
    fed = ContainerFederation(engine, cfg, out / "containers", tls=args.tls, auth=args.tls, echo=echo, out=out)
    try:
        summary = _deploy(fed, args, echo)
    except (DeployError, BuildError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; the federation's containers were removed", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not cut the clean-up short
        fed.down()
        signal.signal(signal.SIGTERM, old)
    if summary is not None and not args.quiet:
        from fedssl.cli import print_summary

        print_summary(summary, str(out))
    return 0


def add_deploy_parser(dsub: Any) -> None:
    c = dsub.add_parser("containers", help="SuperLink, N SuperNodes and the ServerApp in containers, then `flwr run`",
                        description="Build (or reuse) fedssl's images offline, export one shard per SuperNode, "
                                    "start a SuperLink, N SuperNode + ClientApp container pairs and the "
                                    "ServerApp with podman-compose or docker compose, run the experiment with "
                                    "`flwr run`, leave metrics.csv / summary.json in --out, and remove the "
                                    "containers.")
    c.add_argument("--clients", type=int, metavar="N", help="number of SuperNodes (sets data.num_clients)")
    c.add_argument("--engine", choices=["podman", "docker"], help="container engine (default: podman, else docker)")
    c.add_argument("--tls", action="store_true",
                   help="TLS (certificates as from `fedssl deploy certs`) + SuperNode authentication")
    c.add_argument("--config", help="TOML config file (default: the built-in default experiment)")
    c.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config key")
    c.add_argument("--out", help="output directory on this host (default run.out_dir); files of the "
                                 "deployment go to OUT/containers")
    c.add_argument("--official-bases", action="store_true",
                   help="build on Flower's official images from a registry, installing from the package "
                        "indexes (default: offline, local Debian base + host-built wheelhouse)")
    c.add_argument("--build-only", action="store_true", help="build the images and stop")
    c.add_argument("--timeout", type=float, help="give up when the run takes longer (seconds)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing run in the output directory")
    c.add_argument("--quiet", action="store_true", help="errors and the final table only")
    c.set_defaults(func=cmd_containers)
