"""A whole federation in containers on this machine (``fedssl deploy containers``).

The compose file (:mod:`fedssl.deploy.compose`) is generated for N SuperNodes
(``OUT/containers/compose.yml``); the run is submitted from this host with ``flwr run``;
the ServerApp writes metrics.csv / summary.json into ``OUT`` (mounted at
``/fedssl/runs``). With ``tls``: certificates as from ``fedssl deploy certs`` (SAN
``superlink``); with ``auth``: SuperNode authentication with keys as from
``fedssl deploy node-keys``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from fedssl.config import Config
from fedssl.deploy.compose import RUNS, compose_spec, server_data_mounts
from fedssl.deploy.federation import Echo, Federation
from fedssl.deploy.images import Engine
from fedssl.deploy.pki import make_certs, make_node_key
from fedssl.deploy.processes import ANSI, DeployError, free_port

APP_UID = 49999  # user `app` in every image
CONNECTION = "fedssl-containers"


class ContainerFederation(Federation):
    """A federation in containers, driven through the engine's compose tool (see
    :class:`Federation` for ``cfg``, ``workdir``, ``tls``, ``auth``, ``echo``,
    ``startup_timeout``). Files live in ``workdir``: compose.yml, shards/, certs/,
    keys/, logs/ (one log per container, saved by :meth:`stop`).

    Args:
        engine: the container engine and its compose tool (:func:`~fedssl.deploy.images.find_engine`).
        out: where the ServerApp writes (default ``workdir/runs``).
        project: the compose project; every container, network and volume name starts with it.
    """

    connection = CONNECTION

    def __init__(self, engine: Engine, cfg: Config, workdir: Path, *, tls: bool = False, auth: bool = False,
                 echo: Echo | None = None, out: Path | None = None, startup_timeout: float = 300.0,
                 project: str | None = None) -> None:
        super().__init__(cfg, workdir, tls=tls, auth=auth, echo=echo, startup_timeout=startup_timeout)
        self.engine = engine
        self._out = Path(out or self.workdir / "runs").resolve()
        self.project = project or f"fedssl{os.getpid()}x{int(time.time()) % 100000}"
        self.up = False

    @property
    def out(self) -> Path:
        return self._out

    def submitted_config(self) -> Config:
        return self.cfg.replace(**{"run.out_dir": RUNS})

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
            make_certs(self.certs, ["superlink"])
        if self.auth:
            for i in range(n):
                make_node_key(self.workdir / "keys", f"supernode-{i}")
        for path in (self.workdir / "shards", self.out, self.certs, self.workdir / "keys"):
            _give_to_app(path)
        self.port = free_port()
        spec = compose_spec(self.project, n, self.port, self.tls, self.auth, self.out,
                            server_data_mounts(self.cfg))
        (self.workdir / "compose.yml").write_text(json.dumps(spec, indent=1))  # JSON is YAML
        self.write_connection()

    # -- containers
    def logs_of(self, service: str) -> str:
        res = self.engine.run("logs", self.name(service), check=False)
        return ANSI.sub("", res.stdout + res.stderr)

    def running(self, service: str) -> bool:
        res = self.engine.run("inspect", "--format", "{{.State.Running}}", self.name(service), check=False)
        return res.stdout.strip() == "true"

    def wait_log(self, service: str, pattern: str) -> re.Match:
        """Wait until ``pattern`` shows up in the log of ``service``'s container."""
        return self.wait_for(pattern, lambda: self.logs_of(service),
                             lambda: None if self.running(service) else "stopped",
                             f"container {self.name(service)}", poll=1.0)

    def start(self, nodes: list[int] | None = None) -> None:
        """Bring up the SuperLink and the ServerApp, register node keys (``auth``),
        then the SuperNode + ClientApp pairs ``nodes`` (default all); waits until every
        started SuperNode has joined."""
        n = self.cfg.data.num_clients
        self.up = True
        self.compose("up", "-d", "superlink", "serverapp")
        self.wait_log("superlink", r"Uvicorn running on|Starting Flower SuperLink")
        self._say(f"SuperLink container on {self.address} ({'TLS' if self.tls else 'insecure'}"
                  f"{', SuperNode auth' if self.auth else ''})")
        nodes = list(range(n)) if nodes is None else nodes
        if self.auth:
            for i in nodes:
                self.register(self.workdir / "keys" / f"supernode-{i}.pub")
        self.compose("up", "-d", *(s for i in nodes for s in (f"supernode-{i}", f"clientapp-{i}")))
        for i in nodes:
            self.wait_log(f"supernode-{i}", r"SuperNode ID:\s*\d+|Starting Flower SuperNode")
        self._say(f"{len(nodes)} SuperNode + ClientApp container pairs up")

    def kill(self, service: str) -> None:
        """SIGKILL one container (a crash, not a shutdown)."""
        self.engine.run("kill", "--signal", "KILL", self.name(service))

    def stop(self) -> None:
        """Save every container's log to logs/, remove containers, networks and volumes,
        end the ``flwr`` CLI, and hand the output files back to the invoking user."""
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
        super().stop()  # after the containers, so its sweep for tagged strays meets none of theirs
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
