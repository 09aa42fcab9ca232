"""``fedssl deploy local | certs | node-keys`` and ``fedssl node check | start``.

Each ``deploy`` subcommand is added by one function in ``DEPLOY_SUBCOMMANDS``; a module
that brings its own subcommand (e.g. ``fedssl deploy containers``) exposes
``add_deploy_parser(deploy_subparsers)`` and is listed in ``DEPLOY_MODULES``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedssl.config import Config, ConfigError
from fedssl.deploy.federation import (
    CONNECTION,
    LocalFederation,
    flower_exe,
    parse_node_config,
)
from fedssl.deploy.pki import make_certs, make_node_key
from fedssl.deploy.processes import DeployError


def _resolve(args: argparse.Namespace, extra: dict[str, Any]) -> Config:
    from fedssl.config import parse_set, resolve

    overrides = parse_set(args.set or [])
    overrides.update(extra)
    return resolve(args.config, overrides)


def cmd_local(args: argparse.Namespace) -> int:
    from fedssl.data.export import export_shards

    extra: dict[str, Any] = {}
    if args.clients is not None:
        if args.clients < 1:
            raise ConfigError(f"--clients must be >= 1, got {args.clients}")
        extra["data.num_clients"] = args.clients
    if args.out:
        extra["run.out_dir"] = args.out
    cfg = _resolve(args, extra)
    out = Path(cfg.run.out_dir).resolve()
    if (out / "metrics.csv").exists() or (out / "summary.json").exists():
        if not args.overwrite:
            raise ConfigError(f"{out} already holds a run; pass --overwrite to replace it")
        shutil.rmtree(out)
    cfg = cfg.replace(**{"run.out_dir": str(out)})
    n = cfg.data.num_clients
    workdir = out / "deploy"
    echo = (lambda s: None) if args.quiet else (lambda s: print(f"[deploy] {s}", file=sys.stderr, flush=True))

    # SIGTERM -> KeyboardInterrupt, so the finally below stops every process
    def _term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, _term)
    scratch = Path(tempfile.mkdtemp(prefix="fedssl-deploy-"))
    fed = LocalFederation(cfg, workdir, tls=args.tls, auth=args.auth, echo=echo)
    try:
        echo(f"exporting {n} data shards ({cfg.data.dataset}, {cfg.data.partition})")
        shards = [p.parent for p in export_shards(cfg, scratch / "shards")]
        fed.start_superlink()
        fed.start_nodes(shards)
        echo(f"flwr run {fed.app} {CONNECTION} --run-config \"...\" --stream  (FLWR_HOME={fed.home})")
        summary = fed.run(stream_to=None if args.quiet else sys.stdout, timeout=args.timeout)
    except DeployError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; every process started was stopped", file=sys.stderr)
        return 130
    finally:
        fed.stop()
        shutil.rmtree(scratch, ignore_errors=True)
        signal.signal(signal.SIGTERM, old)
    if not args.quiet:
        from fedssl.cli import print_summary

        print_summary(summary, str(out))
    return 0


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
    if not args.config and not args.set:
        return None
    return _resolve(args, {})


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


def _add_local(dsub: Any) -> None:
    loc = dsub.add_parser("local", help="SuperLink + N SuperNodes on this machine, then `flwr run`",
                          description="Start flower-superlink and N flower-supernode processes on "
                                      "127.0.0.1 (one exported data shard each), run the experiment "
                                      "with `flwr run --stream`, write metrics.csv, summary.json and "
                                      "config.toml to --out, and stop every process.")
    loc.add_argument("--clients", type=int, metavar="N", help="number of SuperNodes (sets data.num_clients)")
    loc.add_argument("--config", help="TOML config file (default: the built-in default experiment)")
    loc.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config key")
    loc.add_argument("--out", help="output directory (sets run.out_dir); process logs go to OUT/deploy/logs")
    loc.add_argument("--tls", action="store_true", help="TLS between SuperNodes/CLI and SuperLink (fresh local CA)")
    loc.add_argument("--auth", action="store_true",
                     help="SuperNode authentication (implies --tls): register one key pair per node")
    loc.add_argument("--timeout", type=float, help="give up when the run takes longer (seconds)")
    loc.add_argument("--overwrite", action="store_true", help="replace an existing run in the output directory")
    loc.add_argument("--quiet", action="store_true", help="no streamed logs; errors and the final table only")
    loc.set_defaults(func=cmd_local)


def _add_certs(dsub: Any) -> None:
    c = dsub.add_parser("certs", help="a CA + SuperLink server certificate (TLS)",
                        description="Write ca.crt, ca.key, server.pem and server.key to DIR (EC P-384; "
                                    "SANs 127.0.0.1, ::1, localhost and every --host) and print the "
                                    "matching Flower flags.")
    c.add_argument("--out", required=True, metavar="DIR")
    c.add_argument("--host", action="append", metavar="NAME_OR_IP",
                   help="another name or IP the SuperLink is reached at (repeatable)")
    c.add_argument("--days", type=int, default=365, help="validity (default 365)")
    c.add_argument("--overwrite", action="store_true")
    c.set_defaults(func=cmd_certs)


def _add_node_keys(dsub: Any) -> None:
    k = dsub.add_parser("node-keys", help="SuperNode authentication key pairs",
                        description="Write PREFIX-<i> (private) and PREFIX-<i>.pub (public) EC P-384 "
                                    "keys in OpenSSH format to DIR.")
    k.add_argument("--out", required=True, metavar="DIR")
    k.add_argument("--count", type=int, default=1)
    k.add_argument("--prefix", default="supernode")
    k.add_argument("--overwrite", action="store_true")
    k.set_defaults(func=cmd_node_keys)


# `fedssl deploy <name>`: one function per built-in subcommand, then one module per
# subcommand that lives in its own module (each with `add_deploy_parser(dsub)`).
DEPLOY_SUBCOMMANDS: list[Callable[[Any], None]] = [_add_local, _add_certs, _add_node_keys]
DEPLOY_MODULES: tuple[str, ...] = ("fedssl.container_cli",)  # `deploy containers`


def _add_node(subparsers: Any) -> None:
    n = subparsers.add_parser("node", help="check / start a SuperNode's node config",
                              description="Validate a SuperNode's --node-config before it joins.")
    nsub = n.add_subparsers(dest="node_command", required=True, parser_class=type(n))
    ch = nsub.add_parser("check", help="validate --node-config (partition-id, data-dir)")
    ch.add_argument("--node-config", required=True, metavar="'partition-id=I num-partitions=N data-dir=...'")
    ch.add_argument("--config", help="also check the shard against this run config")
    ch.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE")
    ch.add_argument("--quiet", action="store_true")
    ch.set_defaults(func=cmd_node_check)
    st = nsub.add_parser("start", help="validate, then exec flower-supernode with the given flags",
                         description="fedssl node start [--config F] -- <flower-supernode flags>: "
                                     "validates the --node-config among the flags, then replaces "
                                     "itself with flower-supernode.")
    st.add_argument("--config", help="also check the shard against this run config")
    st.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE")
    st.add_argument("supernode_args", nargs=argparse.REMAINDER, metavar="-- FLAGS")
    st.set_defaults(func=cmd_node_start)


def add_parser(subparsers: Any) -> None:
    d = subparsers.add_parser("deploy", help="real deployments (SuperLink + SuperNodes)",
                              description="Run fedssl on Flower's Deployment Engine.")
    dsub = d.add_subparsers(dest="deploy_command", required=True, parser_class=type(d))
    for add in DEPLOY_SUBCOMMANDS:
        add(dsub)
    for module in DEPLOY_MODULES:
        importlib.import_module(module).add_deploy_parser(dsub)
    _add_node(subparsers)
