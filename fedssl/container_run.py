"""``fedssl deploy containers``: a whole federation in containers on this machine.

One SuperLink, the ServerApp in a ``serverapp`` container, and N SuperNodes, each with
its exported shard (read-only), a state volume and its ClientApp in a ``clientapp``
container next to it (Flower's ``--isolation process``). The compose file is generated
for N (``OUT/containers/compose.yml``, read by podman-compose and docker compose); the
run is submitted from this host with ``flwr run``; the ServerApp writes metrics.csv /
summary.json into ``OUT`` (mounted at ``/fedssl/runs``). ``--tls``: certificates as from
``fedssl deploy certs`` (SAN ``superlink``) and SuperNode authentication with keys as
from ``fedssl deploy node-keys``. Networks: ``fleet`` joins SuperLink, ServerApp and
SuperNodes; each SuperNode shares an internal ``node-<i>`` with its ClientApp only
(their Runtime API is plain HTTP).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedssl.config import Config
from fedssl.containers import Echo, Engine, tag
from fedssl.deploy import (
    DeployError,
    app_dir,
    flower_exe,
    free_port,
    make_certs,
    make_node_key,
    node_config_string,
    run_config_string,
)
from fedssl.deploy.federation import RUN_ID
from fedssl.deploy.processes import ANSI

APP_UID = 49999  # user `app` in every image
RUNS = "/fedssl/runs"
LINK_PORT = 8000
NODE_PORT = 9094
CONNECTION = "fedssl-containers"


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


def _tls_flags(tls: bool, ca: str = "/fedssl/certs/ca.crt") -> list[str]:
    return ["--root-certificates", ca] if tls else ["--insecure"]


def _superlink(project: str, port: int, tls: bool, auth: bool) -> dict[str, Any]:
    cmd = ["--isolation=process", "--host=0.0.0.0", f"--port={LINK_PORT}",
           "--disable-runtime-dependency-installation"]
    vols = []
    if tls:
        cmd += ["--ssl-ca-certfile=/fedssl/certs/ca.crt", "--ssl-certfile=/fedssl/certs/server.pem",
                "--ssl-keyfile=/fedssl/certs/server.key"]
        vols = ["./certs:/fedssl/certs:ro"]
    else:
        cmd += ["--insecure"]
    if auth:
        cmd += ["--enable-supernode-auth"]
    return {"image": tag("superlink"), "container_name": f"{project}-superlink", "command": cmd,
            "ports": [f"127.0.0.1:{port}:{LINK_PORT}"], "volumes": vols, "networks": ["fleet"]}


def _node(project: str, i: int, n: int, tls: bool, auth: bool) -> dict[str, dict[str, Any]]:
    nc = {"partition-id": i, "num-partitions": n, "data-dir": "/fedssl/data", "state-dir": "/fedssl/state"}
    shard = f"./shards/partition-{i}:/fedssl/data:ro"
    cmd = [*_tls_flags(tls), f"--superlink=superlink:{LINK_PORT}", "--isolation=process", "--host=0.0.0.0",
           f"--port={NODE_PORT}", f"--node-config={node_config_string(nc)}"]
    vols = [shard] + (["./certs/ca.crt:/fedssl/certs/ca.crt:ro"] if tls else [])
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
    """The compose file for a SuperLink, a ServerApp writing to ``out`` and ``n``
    SuperNode + ClientApp pairs; other paths are relative to the compose file."""
    services = {"superlink": _superlink(project, port, tls, auth),
                "serverapp": {"image": tag("serverapp"), "container_name": f"{project}-serverapp",
                              "command": [*_tls_flags(tls), f"--runtime-api-address=superlink:{LINK_PORT}"],
                              "volumes": [f"{out}:{RUNS}", *data_mounts]
                              + (["./certs/ca.crt:/fedssl/certs/ca.crt:ro"] if tls else []),
                              "networks": ["fleet"], "depends_on": ["superlink"]}}
    for i in range(n):
        services.update(_node(project, i, n, tls, auth))
    networks: dict[str, Any] = {"fleet": {}}
    networks.update({f"node-{i}": {"internal": True} for i in range(n)})
    return {"services": services, "networks": networks, "volumes": {f"state-{i}": {} for i in range(n)}}


@dataclass
class ContainerFederation:
    """A federation in containers, driven through the engine's compose tool. Files
    live in ``workdir`` (compose.yml, shards/, certs/, keys/, runs/ = the run's
    output, logs/); use as a context manager: ``down`` on exit. The ServerApp writes
    to ``out`` (default ``workdir/runs``)."""

    engine: Engine
    cfg: Config
    workdir: Path
    tls: bool = False
    auth: bool = False
    echo: Echo | None = None
    out: Path = None  # type: ignore[assignment]  # None: workdir/runs (set in __post_init__)
    startup_timeout: float = 300.0
    project: str = field(default_factory=lambda: f"fedssl{os.getpid()}x{int(time.time()) % 100000}")

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir).resolve()
        self.out = Path(self.out or self.workdir / "runs").resolve()
        self.tls = self.tls or self.auth
        self.port = 0
        self.home = self.workdir / "flwr-home"
        self.logs = self.workdir / "logs"
        self.up = False

    def __enter__(self) -> ContainerFederation:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def _say(self, text: str) -> None:
        self.echo and self.echo(text)

    def name(self, service: str) -> str:
        return f"{self.project}-{service}"

    # -- compose
    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [*self.engine.compose, "-p", self.project, "-f", str(self.workdir / "compose.yml"), *args]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.workdir, check=False)
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / "compose.log", "a") as fh:
            fh.write(f"$ {' '.join(cmd)}\n{res.stdout}{res.stderr}\n")
        if check and res.returncode != 0:
            tail = [ln for ln in (res.stderr + res.stdout).splitlines() if ln.strip()][-2:]
            raise DeployError(f"{' '.join(self.engine.compose)} {args[0]} failed: {' | '.join(tail)} "
                              f"(log: {self.logs / 'compose.log'})")
        return res

    def prepare(self, shards_from: Path) -> None:
        """Shards (moved from an export), certificates, keys, the output directory and
        the compose file; files the containers read or write are made theirs."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        n = self.cfg.data.num_clients
        shutil.move(str(shards_from), self.workdir / "shards")
        self.out.mkdir(parents=True, exist_ok=True)
        if self.tls:
            make_certs(self.workdir / "certs", ["superlink"])
        if self.auth:
            for i in range(n):
                make_node_key(self.workdir / "keys", f"supernode-{i}")
        for path in (self.workdir / "shards", self.out, self.workdir / "certs", self.workdir / "keys"):
            _give_to_app(path)
        self.port = free_port()
        spec = compose_spec(self.project, n, self.port, self.tls, self.auth, self.out,
                            server_data_mounts(self.cfg))
        (self.workdir / "compose.yml").write_text(json.dumps(spec, indent=1))  # JSON is YAML
        self._write_connection()

    def _write_connection(self) -> None:
        import tomli_w

        conn: dict[str, Any] = {"address": f"127.0.0.1:{self.port}"}
        if self.tls:
            conn["root-certificates"] = str(self.workdir / "certs" / "ca.crt")
        else:
            conn["insecure"] = True
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "config.toml").write_text(tomli_w.dumps({"superlink": {"default": CONNECTION,
                                                                            CONNECTION: conn}}))

    # -- containers
    def logs_of(self, service: str) -> str:
        res = self.engine.run("logs", self.name(service), check=False)
        return ANSI.sub("", res.stdout + res.stderr)

    def running(self, service: str) -> bool:
        res = self.engine.run("inspect", "--format", "{{.State.Running}}", self.name(service), check=False)
        return res.stdout.strip() == "true"

    def wait_log(self, service: str, pattern: str, timeout: float | None = None) -> re.Match:
        deadline = time.time() + (timeout or self.startup_timeout)
        while True:
            m = re.search(pattern, self.logs_of(service))
            if m:
                return m
            if time.time() > deadline or not self.running(service):
                tail = " | ".join(ln.strip() for ln in self.logs_of(service).splitlines()[-3:])
                raise DeployError(f"container {self.name(service)} not ready ({pattern!r} not in its log): {tail}")
            time.sleep(1.0)

    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        env = {**os.environ, "FLWR_HOME": str(self.home), "FLWR_TELEMETRY_ENABLED": "0",
               "FLWR_DISABLE_UPDATE_CHECK": "1"}
        return subprocess.run([flower_exe("flwr"), *args], capture_output=True, text=True, timeout=timeout,
                              env=env, cwd=app_dir(), check=False)

    def start(self, nodes: list[int] | None = None) -> None:
        """Bring up the SuperLink and the ServerApp, register node keys (``auth``),
        then the SuperNode + ClientApp pairs ``nodes`` (default all); waits until every
        started SuperNode has joined."""
        n = self.cfg.data.num_clients
        self.up = True
        self.compose("up", "-d", "superlink", "serverapp")
        self.wait_log("superlink", r"Uvicorn running on|Starting Flower SuperLink")
        self._say(f"SuperLink container on 127.0.0.1:{self.port} ({'TLS' if self.tls else 'insecure'}"
                  f"{', SuperNode auth' if self.auth else ''})")
        nodes = list(range(n)) if nodes is None else nodes
        if self.auth:
            for i in nodes:
                self.register(self.workdir / "keys" / f"supernode-{i}.pub")
        self.compose("up", "-d", *(s for i in nodes for s in (f"supernode-{i}", f"clientapp-{i}")))
        for i in nodes:
            self.wait_log(f"supernode-{i}", r"SuperNode ID:\s*\d+|Starting Flower SuperNode")
        self._say(f"{len(nodes)} SuperNode + ClientApp container pairs up")

    def register(self, public_key: Path) -> None:
        res = self.flwr("supernode", "register", str(public_key), CONNECTION)
        if res.returncode != 0:
            tail = ANSI.sub("", res.stdout + res.stderr).strip().splitlines()[-1:]
            raise DeployError(f"flwr supernode register {public_key.name} failed: {tail}")

    def start_run(self) -> subprocess.Popen:
        cfg = self.cfg.replace(**{"run.out_dir": RUNS})
        cmd = [flower_exe("flwr"), "run", str(app_dir()), CONNECTION, "--run-config",
               run_config_string(cfg), "--stream"]
        self.logs.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "FLWR_HOME": str(self.home), "FLWR_TELEMETRY_ENABLED": "0",
               "FLWR_DISABLE_UPDATE_CHECK": "1", "PYTHONUNBUFFERED": "1"}
        fh = open(self.logs / "flwr-run.log", "w")  # noqa: SIM115 (closed in wait_run)
        popen = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env=env, cwd=app_dir(), start_new_session=True)
        popen._fedssl_log = fh  # type: ignore[attr-defined]
        return popen

    def wait_run(self, popen: subprocess.Popen, timeout: float | None = None) -> dict[str, Any]:
        try:
            rc = popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            raise DeployError(f"the run did not finish within {timeout:.0f} s (logs: {self.logs})") from None
        finally:
            popen._fedssl_log.close()  # type: ignore[attr-defined]
        text = ANSI.sub("", (self.logs / "flwr-run.log").read_text(errors="replace"))
        summary = self.out / "summary.json"
        if rc != 0 or not summary.exists():
            last = [ln.strip() for ln in text.splitlines() if ln.strip()][-3:]
            raise DeployError(f"`flwr run` exited with status {rc} without {summary}: {' | '.join(last)} "
                              f"(logs: {self.logs})")
        out = json.loads(summary.read_text())
        m = RUN_ID.search(text)
        if m:
            out["flower_run_id"] = int(m.group(1))
        return out

    def kill(self, service: str) -> None:
        """SIGKILL one container (a crash, not a shutdown)."""
        self.engine.run("kill", "--signal", "KILL", self.name(service))

    def down(self) -> None:
        """Save every container's log to logs/, remove containers, networks, volumes;
        hand the output files back to the invoking user."""
        if self.up:
            spec = json.loads((self.workdir / "compose.yml").read_text())
            for service in spec["services"]:
                (self.logs / f"{service}.log").write_text(self.logs_of(service))
            self.compose("down", "-v", "-t", "5", check=False)
            # podman-compose 1.0 stops at a service that never started and keeps networks
            names = [svc["container_name"] for svc in spec["services"].values()]
            self.engine.run("rm", "-f", "-t", "0", *names, check=False)
            self.engine.run("network", "rm", *(f"{self.project}_{n}" for n in spec["networks"]), check=False)
            self.engine.run("volume", "rm", *(f"{self.project}_{v}" for v in spec["volumes"]), check=False)
            self.up = False
        if os.getuid() == 0:
            for path in (self.out, self.workdir):
                _chown_tree(path, os.getuid(), os.getgid())


def _give_to_app(path: Path) -> None:
    """Make ``path`` usable by the containers' user (uid 49999): owned by it when we
    are root, else world-readable (and the output directory world-writable)."""
    if not path.exists():
        return
    if os.getuid() == 0:
        _chown_tree(path, APP_UID, APP_UID)
    else:
        for p in [path, *path.rglob("*")]:
            p.chmod(p.stat().st_mode | (0o777 if p.is_dir() else 0o644))


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    for p in [path, *path.rglob("*")]:
        try:
            os.chown(p, uid, gid, follow_symlinks=False)
        except OSError:
            pass
