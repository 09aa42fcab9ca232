"""The compose file of a federation in containers (read by podman-compose and docker
compose): one SuperLink, the ServerApp in a ``serverapp`` container, and N SuperNodes,
each with its exported shard (read-only), a state volume and its ClientApp in a
``clientapp`` container next to it (Flower's ``--isolation process``).

Networks: ``fleet`` joins SuperLink, ServerApp and SuperNodes; each SuperNode shares an
internal ``node-<i>`` with its ClientApp only (their Runtime API is plain HTTP).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedssl.config import Config
from fedssl.deploy.federation import node_config_string
from fedssl.deploy.images import tag
from fedssl.deploy.processes import DeployError

RUNS = "/fedssl/runs"  # where the ServerApp writes; the host's output directory is mounted there
LINK_PORT = 8000
NODE_PORT = 9094
CA = "/fedssl/certs/ca.crt"


def server_data_mounts(cfg: Config) -> list[str]:
    """The ServerApp evaluates on the test split, which it reads from the dataset's
    directory: mounted read-only at the host's path (synthetic data needs none)."""
    if cfg.data.dataset == "synthetic":
        return []
    from fedssl.data.sources import FASHION_SYSTEM_DIR

    root = cfg.data.root or (str(FASHION_SYSTEM_DIR) if cfg.data.dataset == "fashion-mnist" else "")
    if not root:
        raise DeployError(f"data.root is needed to mount {cfg.data.dataset} into the serverapp container")
    root = str(Path(root).expanduser().resolve())
    return [f"{root}:{root}:ro"]


def _tls_flags(tls: bool) -> list[str]:
    return ["--root-certificates", CA] if tls else ["--insecure"]


def _ca_mount(tls: bool) -> list[str]:
    return [f"./certs/ca.crt:{CA}:ro"] if tls else []


def _superlink(project: str, port: int, tls: bool, auth: bool) -> dict[str, Any]:
    cmd = ["--isolation=process", "--host=0.0.0.0", f"--port={LINK_PORT}",
           "--disable-runtime-dependency-installation"]
    vols = []
    if tls:
        cmd += [f"--ssl-ca-certfile={CA}", "--ssl-certfile=/fedssl/certs/server.pem",
                "--ssl-keyfile=/fedssl/certs/server.key"]
        vols = ["./certs:/fedssl/certs:ro"]
    else:
        cmd += ["--insecure"]
    if auth:
        cmd += ["--enable-supernode-auth"]
    return {"image": tag("superlink"), "container_name": f"{project}-superlink", "command": cmd,
            "ports": [f"127.0.0.1:{port}:{LINK_PORT}"], "volumes": vols, "networks": ["fleet"]}


def _serverapp(project: str, tls: bool, out: Path, data_mounts: list[str]) -> dict[str, Any]:
    return {"image": tag("serverapp"), "container_name": f"{project}-serverapp",
            "command": [*_tls_flags(tls), f"--runtime-api-address=superlink:{LINK_PORT}"],
            "volumes": [f"{out}:{RUNS}", *data_mounts, *_ca_mount(tls)],
            "networks": ["fleet"], "depends_on": ["superlink"]}


def _node(project: str, i: int, n: int, tls: bool, auth: bool) -> dict[str, dict[str, Any]]:
    nc = {"partition-id": i, "num-partitions": n, "data-dir": "/fedssl/data", "state-dir": "/fedssl/state"}
    shard = f"./shards/partition-{i}:/fedssl/data:ro"
    cmd = [*_tls_flags(tls), f"--superlink=superlink:{LINK_PORT}", "--isolation=process", "--host=0.0.0.0",
           f"--port={NODE_PORT}", f"--node-config={node_config_string(nc)}"]
    vols = [shard, *_ca_mount(tls)]
    if auth:
        cmd += [f"--auth-supernode-private-key=/fedssl/keys/supernode-{i}"]
        vols += [f"./keys/supernode-{i}:/fedssl/keys/supernode-{i}:ro"]
    return {
        f"supernode-{i}": {"image": tag("supernode"), "container_name": f"{project}-supernode-{i}",
                           "command": cmd, "volumes": vols, "networks": ["fleet", f"node-{i}"],
                           "depends_on": ["superlink"]},
        f"clientapp-{i}": {"image": tag("clientapp"), "container_name": f"{project}-clientapp-{i}",
                           "command": ["--insecure", f"--runtime-api-address=supernode-{i}:{NODE_PORT}"],
                           "volumes": [shard, f"state-{i}:/fedssl/state"], "networks": [f"node-{i}"],
                           "depends_on": [f"supernode-{i}"]},
    }


def compose_spec(project: str, n: int, port: int, tls: bool, auth: bool, out: Path,
                 data_mounts: list[str]) -> dict:
    """The compose file for a SuperLink published on 127.0.0.1:``port``, a ServerApp
    writing to ``out`` and ``n`` SuperNode + ClientApp pairs; other paths are relative
    to the compose file (shards/, certs/, keys/)."""
    services = {"superlink": _superlink(project, port, tls, auth),
                "serverapp": _serverapp(project, tls, out, data_mounts)}
    for i in range(n):
        services.update(_node(project, i, n, tls, auth))
    networks: dict[str, Any] = {"fleet": {}}
    networks.update({f"node-{i}": {"internal": True} for i in range(n)})
    return {"services": services, "networks": networks, "volumes": {f"state-{i}": {} for i in range(n)}}
