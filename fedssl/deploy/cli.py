"""The flags of ``fedssl deploy local | containers | certs | node-keys`` and
``fedssl node check | start``; what each does is in :mod:`fedssl.deploy.commands`."""

from __future__ import annotations

import argparse
from typing import Any

from fedssl.console import add_config_flags, add_output_flags
from fedssl.deploy.commands import (
    cmd_certs,
    cmd_containers,
    cmd_local,
    cmd_node_check,
    cmd_node_keys,
    cmd_node_start,
)

NODE_CONFIG_HELP = "also check the shard against this run config"


def _federation_parser(dsub: Any, name: str, help: str, description: str) -> argparse.ArgumentParser:
    """A subcommand that brings a federation up: ``--clients`` first."""
    p = dsub.add_parser(name, help=help, description=description)
    p.add_argument("--clients", type=int, metavar="N", help="number of SuperNodes (sets data.num_clients)")
    return p


def _add_run_flags(p: argparse.ArgumentParser, quiet_help: str, func: Any) -> None:
    """The flags that end every federation subcommand: its time limit, output and noise."""
    p.add_argument("--timeout", type=float, help="give up when the run takes longer (seconds)")
    add_output_flags(p, "replace an existing run in the output directory", quiet_help)
    p.set_defaults(func=func)


def _add_local(dsub: Any) -> None:
    loc = _federation_parser(
        dsub, "local", "SuperLink + N SuperNodes on this machine, then `flwr run`",
        "Start flower-superlink and N flower-supernode processes on 127.0.0.1 (one exported data "
        "shard each), run the experiment with `flwr run --stream`, write metrics.csv, summary.json "
        "and config.toml to --out, and stop every process.")
    add_config_flags(loc)
    loc.add_argument("--out", help="output directory (sets run.out_dir); process logs go to OUT/deploy/logs")
    loc.add_argument("--tls", action="store_true", help="TLS between SuperNodes/CLI and SuperLink (fresh local CA)")
    loc.add_argument("--auth", action="store_true",
                     help="SuperNode authentication (implies --tls): register one key pair per node")
    _add_run_flags(loc, "no streamed logs; errors and the final table only", cmd_local)


def _add_containers(dsub: Any) -> None:
    c = _federation_parser(
        dsub, "containers", "SuperLink, N SuperNodes and the ServerApp in containers, then `flwr run`",
        "Build (or reuse) fedssl's images offline, export one shard per SuperNode, start a SuperLink, "
        "N SuperNode + ClientApp container pairs and the ServerApp with podman-compose or docker "
        "compose, run the experiment with `flwr run`, leave metrics.csv / summary.json in --out, and "
        "remove the containers.")
    c.add_argument("--engine", choices=["podman", "docker"], help="container engine (default: podman, else docker)")
    c.add_argument("--tls", action="store_true",
                   help="TLS (certificates as from `fedssl deploy certs`) + SuperNode authentication")
    add_config_flags(c)
    c.add_argument("--out", help="output directory on this host (default run.out_dir); files of the "
                                 "deployment go to OUT/containers")
    c.add_argument("--official-bases", action="store_true",
                   help="build on Flower's official images from a registry, installing from the package "
                        "indexes (default: offline, local Debian base + host-built wheelhouse)")
    c.add_argument("--build-only", action="store_true", help="build the images and stop")
    _add_run_flags(c, "errors and the final table only", cmd_containers)


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


def _add_node(subparsers: Any) -> None:
    n = subparsers.add_parser("node", help="check / start a SuperNode's node config",
                              description="Validate a SuperNode's --node-config before it joins.")
    nsub = n.add_subparsers(dest="node_command", required=True, parser_class=type(n))
    ch = nsub.add_parser("check", help="validate --node-config (partition-id, data-dir)")
    ch.add_argument("--node-config", required=True, metavar="'partition-id=I num-partitions=N data-dir=...'")
    add_config_flags(ch, config_help=NODE_CONFIG_HELP, set_help=None)
    ch.add_argument("--quiet", action="store_true")
    ch.set_defaults(func=cmd_node_check)
    st = nsub.add_parser("start", help="validate, then exec flower-supernode with the given flags",
                         description="fedssl node start [--config F] -- <flower-supernode flags>: "
                                     "validates the --node-config among the flags, then replaces "
                                     "itself with flower-supernode.")
    add_config_flags(st, config_help=NODE_CONFIG_HELP, set_help=None)
    st.add_argument("supernode_args", nargs=argparse.REMAINDER, metavar="-- FLAGS")
    st.set_defaults(func=cmd_node_start)


def add_parser(subparsers: Any) -> None:
    """``fedssl deploy <local | containers | certs | node-keys>`` and ``fedssl node``."""
    d = subparsers.add_parser("deploy", help="real deployments (SuperLink + SuperNodes)",
                              description="Run fedssl on Flower's Deployment Engine.")
    dsub = d.add_subparsers(dest="deploy_command", required=True, parser_class=type(d))
    for add in (_add_local, _add_certs, _add_node_keys, _add_containers):
        add(dsub)
    _add_node(subparsers)
