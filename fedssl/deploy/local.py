"""The local federation: a SuperLink and SuperNodes as processes on this machine,
driven by the ``flwr`` CLI (``fedssl deploy local`` and the deployment tests)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fedssl.config import Config
from fedssl.deploy.federation import Echo, Federation, flower_exe, node_config_string
from fedssl.deploy.pki import make_certs, make_node_key
from fedssl.deploy.processes import DeployError, Proc, free_port

CONNECTION = "fedssl-local"
READY_LINK = re.compile(r"Uvicorn running on")  # printed once the port is bound
READY_NODE = re.compile(r"SuperNode ID:\s*(\d+)")
PORT_TAKEN = re.compile(r"address already in use|Errno 98", re.I)


class LocalFederation(Federation):
    """A SuperLink and SuperNodes as local processes (see :class:`Federation` for
    ``cfg``, ``workdir``, ``tls``, ``auth``, ``echo``, ``startup_timeout``).

    Args:
        host: the address the SuperLink binds and the nodes and the CLI dial.
        link_prefix: prepended to the SuperLink's command line
            (e.g. ``["ip", "netns", "exec", "ns1"]``).
        node_prefix: prepended to every SuperNode's command line.
        cli_prefix: prepended to every ``flwr`` CLI call.
        app: the Flower app directory (default: fedssl's own).
    """

    connection = CONNECTION

    def __init__(self, cfg: Config, workdir: Path, *, tls: bool = False, auth: bool = False,
                 host: str = "127.0.0.1", link_prefix: list[str] | None = None,
                 node_prefix: list[str] | None = None, cli_prefix: list[str] | None = None,
                 app: Path | None = None, startup_timeout: float = 180.0, echo: Echo | None = None) -> None:
        super().__init__(cfg, workdir, tls=tls, auth=auth, echo=echo, startup_timeout=startup_timeout)
        self.host = host
        self.link_prefix = list(link_prefix or [])
        self.node_prefix = list(node_prefix or [])
        self.cli_prefix = list(cli_prefix or [])
        if app is not None:
            self.app = Path(app).resolve()
        self.link: Proc | None = None
        self.nodes: dict[str, Proc] = {}
        self.node_ids: dict[str, int] = {}

    def wait_log(self, proc: Proc, pattern: re.Pattern, what: str, offset: int = 0) -> re.Match:
        """Wait until ``pattern`` shows up in ``proc``'s log (after byte ``offset``)."""
        def read() -> str:
            try:
                return proc.log.read_text(errors="replace")[offset:]
            except OSError:
                return ""

        def gone() -> str | None:
            return None if proc.alive() else f"exited with status {proc.popen.returncode}"

        return self.wait_for(pattern, read, gone, what)

    # -- SuperLink
    def start_superlink(self) -> Proc:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.tls:
            make_certs(self.certs, [self.host])
        for attempt in range(3):  # the free port may be taken between probe and bind
            self.port = free_port()
            cmd = [*self.link_prefix, flower_exe("flower-superlink"), "--host", self.host,
                   "--port", str(self.port), "--disable-runtime-dependency-installation"]
            if self.tls:
                cmd += ["--ssl-certfile", str(self.certs / "server.pem"),
                        "--ssl-keyfile", str(self.certs / "server.key"),
                        "--ssl-ca-certfile", str(self.certs / "ca.crt")]
            else:
                cmd += ["--insecure"]
            if self.auth:
                cmd += ["--enable-supernode-auth"]
            log = self.logs / "superlink.log"
            offset = log.stat().st_size if log.exists() else 0
            link = self.procs.start("superlink", cmd, log, self.env(self.workdir / "home-superlink"), self.app)
            try:
                self.wait_log(link, READY_LINK, "the SuperLink", offset)
                break
            except DeployError:
                if attempt == 2 or not PORT_TAKEN.search(log.read_text(errors="replace")[offset:]):
                    raise
                self.procs.kill(link, grace=2)
        self.link = link
        self.write_connection()
        self._say(f"SuperLink on {self.address} ({'TLS' if self.tls else 'insecure'}"
                  f"{', SuperNode auth' if self.auth else ''}); logs: {self.logs}")
        return link

    # -- SuperNodes
    def start_node(self, name: str, node_config: dict[str, Any], private_key: Path | None = None,
                   wait: bool = True) -> Proc:
        """Start one ``flower-supernode`` with ``node_config`` (a fresh runtime port,
        its own FLWR_HOME), and by default wait until it has joined the SuperLink."""
        from fedssl.data.export import check_node_config

        check_node_config(node_config, self.cfg)  # one-line error before any process starts
        port = free_port()
        cmd = [*self.node_prefix, flower_exe("flower-supernode"), "--superlink", self.address,
               "--port", str(port), "--node-config", node_config_string(node_config)]
        cmd += ["--root-certificates", str(self.certs / "ca.crt")] if self.tls else ["--insecure"]
        if private_key is not None:
            cmd += ["--auth-supernode-private-key", str(private_key)]
        proc = self.procs.start(name, cmd, self.logs / f"{name}.log",
                                self.env(self.workdir / f"home-{name}"), self.app)
        self.nodes[name] = proc
        if wait:
            m = self.wait_log(proc, READY_NODE, f"SuperNode {name}")
            self.node_ids[name] = int(m.group(1))
        return proc

    def start_nodes(self, shards: list[Path], state_root: Path | None = None) -> None:
        """One SuperNode per shard (partition i <- shards[i]); with ``auth`` a key pair per
        node is generated and registered first. Waits until all joined."""
        n = len(shards)
        state_root = state_root or self.workdir / "client-state"
        keys: dict[int, Path] = {}
        if self.auth:
            for i in range(n):
                priv, pub = make_node_key(self.workdir / "keys", f"supernode-{i}")
                self.register(pub)
                keys[i] = priv
            self._say(f"registered {n} SuperNode public keys")
        for i, shard in enumerate(shards):
            nc = {"partition-id": i, "num-partitions": self.cfg.data.num_clients,
                  "data-dir": str(shard), "state-dir": str(state_root / f"partition-{i}")}
            if self.cfg.stream.stages:  # a stage's samples come from the whole dataset: nodes load it
                del nc["data-dir"]
            self.start_node(f"supernode-{i}", nc, keys.get(i), wait=False)
        for i in range(n):
            name = f"supernode-{i}"
            m = self.wait_log(self.nodes[name], READY_NODE, f"SuperNode {name}")
            self.node_ids[name] = int(m.group(1))
        self._say(f"{n} SuperNodes joined: " + ", ".join(f"partition {i} = node {self.node_ids[f'supernode-{i}']}"
                                                         for i in range(n)))
