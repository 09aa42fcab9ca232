"""What ``fedssl deploy local | containers | certs | node-keys`` and ``fedssl node check |
start`` do; their flags are declared in :mod:`fedssl.deploy.cli`.

Bad input raises ConfigError (exit 2, one ``error:`` line); a deployment that fails to
start or finish exits 1 with one ``error:`` line; Ctrl-C and SIGTERM exit 130. Every
process or container a command started is stopped before it returns.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedssl.config import Config, ConfigError
from fedssl.console import config_from_flags
from fedssl.report.terminal import print_summary
from fedssl.deploy.federation import Echo, Federation, app_dir, flower_exe, parse_node_config
from fedssl.deploy.pki import make_certs, make_node_key
from fedssl.deploy.processes import DeployError


def _deploy_config(args: argparse.Namespace) -> tuple[Config, Path]:
    """The run config (``--clients`` sets data.num_clients, ``--out`` run.out_dir) and
    its output directory, resolved."""
    extra: dict[str, Any] = {}
    if args.clients is not None:
        if args.clients < 1:
            raise ConfigError(f"--clients must be >= 1, got {args.clients}")
        extra["data.num_clients"] = args.clients
    if args.out:
        extra["run.out_dir"] = args.out
    cfg = config_from_flags(args, extra)
    out = Path(cfg.run.out_dir).resolve()
    return cfg.replace(**{"run.out_dir": str(out)}), out


def _clear(out: Path, overwrite: bool) -> None:
    """Refuse (or with ``overwrite`` remove) a run already in ``out``."""
    if (out / "metrics.csv").exists() or (out / "summary.json").exists():
        if not overwrite:
            raise ConfigError(f"{out} already holds a run; pass --overwrite to replace it")
        shutil.rmtree(out)


def _echo(quiet: bool, prefix: str) -> Echo:
    if quiet:
        return lambda s: None
    return lambda s: print(f"[{prefix}] {s}", file=sys.stderr, flush=True)


def _drive(fed: Federation, body: Callable[[], dict[str, Any] | None], stopped: str,
           failures: tuple[type[Exception], ...] = (DeployError,)) -> tuple[int, dict[str, Any] | None]:
    """Run ``body`` (which starts ``fed`` and returns the run's summary) and stop ``fed``
    whatever happens: (0, summary), (1, None) after a failure, (130, None) after Ctrl-C
    or SIGTERM; ``stopped`` says what was cleaned up."""
    def _term(signum: int, frame: Any) -> None:  # SIGTERM -> the clean-up below, as Ctrl-C
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, _term)
    try:
        return 0, body()
    except failures as e:
        print(f"error: {e}", file=sys.stderr)
        return 1, None
    except KeyboardInterrupt:
        print(f"error: interrupted; {stopped}", file=sys.stderr)
        return 130, None
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not cut the clean-up short
        fed.stop()
        signal.signal(signal.SIGTERM, old)


def cmd_local(args: argparse.Namespace) -> int:
    from fedssl.data.export import export_shards
    from fedssl.deploy.local import LocalFederation

    cfg, out = _deploy_config(args)
    _clear(out, args.overwrite)
    echo = _echo(args.quiet, "deploy")
    fed = LocalFederation(cfg, out / "deploy", tls=args.tls, auth=args.auth, echo=echo)

    def body() -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="fedssl-deploy-") as scratch:
            echo(f"exporting {cfg.data.num_clients} data shards ({cfg.data.dataset}, {cfg.data.partition})")
            shards = [p.parent for p in export_shards(cfg, Path(scratch) / "shards")]
            fed.start_superlink()
            fed.start_nodes(shards)
            echo(f"flwr run {fed.app} {fed.connection} --run-config \"...\" --stream  (FLWR_HOME={fed.home})")
            return fed.run(stream_to=None if args.quiet else sys.stdout, timeout=args.timeout)

    code, summary = _drive(fed, body, "every process started was stopped")
    if summary is not None and not args.quiet:
        print_summary(summary, str(out))
    return code


def cmd_containers(args: argparse.Namespace) -> int:
    from fedssl.data.export import export_shards
    from fedssl.deploy.containers import ContainerFederation
    from fedssl.deploy.images import BuildError, build_images, find_engine

    cfg, out = _deploy_config(args)
    if cfg.stream.stages:  # containers get their shard only; a stage's samples come from the whole dataset
        raise ConfigError("stream.stages > 0 needs the whole dataset on every node, and deploy containers "
                          "mounts each node's shard only: use fedssl run or fedssl deploy local")
    engine = find_engine(args.engine)  # exit 2 naming the packages to install, before anything else
    _clear(out, args.overwrite)
    echo = _echo(args.quiet, "containers")
    echo(f"engine: {engine.describe()}")
    fed = ContainerFederation(engine, cfg, out / "containers", tls=args.tls, auth=args.tls, echo=echo, out=out)

    def body() -> dict[str, Any] | None:
        t0 = time.time()
        build_images(engine, app_dir(), echo, official=args.official_bases)
        echo(f"images ready in {time.time() - t0:.0f} s")
        if args.build_only:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            echo(f"exporting {cfg.data.num_clients} shards ({cfg.data.dataset}, {cfg.data.partition})")
            export_shards(cfg, Path(tmp) / "shards")
            fed.prepare(Path(tmp) / "shards")
        fed.start()
        t1 = time.time()
        echo(f"flwr run {fed.app} {fed.connection} --stream  (FLWR_HOME={fed.home}; "
             f"log: {fed.logs / 'flwr-run.log'})")
        summary = fed.run(timeout=args.timeout)
        echo(f"run finished in {time.time() - t1:.0f} s")
        return summary

    code, summary = _drive(fed, body, "the federation's containers were removed", (DeployError, BuildError))
    if summary is not None and not args.quiet:
        print_summary(summary, str(out))
    return code


def cmd_certs(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    for name in ("ca.crt", "server.pem", "server.key"):
        if (out / name).exists() and not args.overwrite:
            raise ConfigError(f"{out / name} exists; pass --overwrite to replace it")
    paths = make_certs(out, args.host or [], days=args.days)
    print(f"wrote {', '.join(sorted(p.name for p in paths.values()))} to {out} "
          f"(SANs: 127.0.0.1, ::1, localhost{''.join(', ' + h for h in args.host or [])})")
    print(f"flower-superlink --ssl-ca-certfile {paths['ca.crt']} --ssl-certfile {paths['server.pem']} "
          f"--ssl-keyfile {paths['server.key']}")
    print(f"flower-supernode --root-certificates {paths['ca.crt']} --superlink HOST:8000 ...")
    print(f"$FLWR_HOME/config.toml:  [superlink.NAME]  address = \"HOST:8000\"  "
          f"root-certificates = \"{paths['ca.crt']}\"")
    print("keep ca.key offline; server.key belongs on the SuperLink only")
    return 0


def cmd_node_keys(args: argparse.Namespace) -> int:
    if args.count < 1:
        raise ConfigError(f"--count must be >= 1, got {args.count}")
    out = Path(args.out).resolve()
    for i in range(args.count):
        name = f"{args.prefix}-{i}"
        if (out / name).exists() and not args.overwrite:
            raise ConfigError(f"{out / name} exists; pass --overwrite to replace it")
    for i in range(args.count):
        priv, pub = make_node_key(out, f"{args.prefix}-{i}")
        print(f"{priv}  (flower-supernode --auth-supernode-private-key {priv})")
        print(f"{pub}  (flwr supernode register {pub} <connection>)")
    return 0


def _node_config_from(argv: list[str]) -> str | None:
    for i, a in enumerate(argv):
        if a == "--node-config" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--node-config="):
            return a.split("=", 1)[1]
    return None


def _node_run_cfg(args: argparse.Namespace) -> Config | None:
    """The run config to check a shard against, when ``--config`` or ``--set`` names one."""
    return config_from_flags(args) if args.config or args.set else None


def cmd_node_check(args: argparse.Namespace) -> int:
    from fedssl.data.export import check_node_config

    node_config = parse_node_config(args.node_config)
    meta = check_node_config(node_config, _node_run_cfg(args))
    if not args.quiet:
        where = (f", {meta['num_labeled']} labeled + {meta['num_unlabeled']} unlabeled "
                 f"{meta['dataset']} samples (config hash {meta['config_hash']})") if meta else ""
        print(f"ok: partition {node_config['partition-id']} of "
              f"{node_config.get('num-partitions', '?')}{where}")
    return 0


def cmd_node_start(args: argparse.Namespace) -> int:
    from fedssl.data.export import check_node_config

    argv = list(args.supernode_args or [])
    if argv and argv[0] == "--":
        argv = argv[1:]
    text = _node_config_from(argv)
    if text is None:
        raise ConfigError("flower-supernode flags lack --node-config "
                          "\"partition-id=I num-partitions=N data-dir='...'\"")
    check_node_config(parse_node_config(text), _node_run_cfg(args))
    exe = flower_exe("flower-supernode")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(exe, [exe, *argv])
    return 0  # not reached
