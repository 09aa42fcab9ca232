"""The local federation: a SuperLink and SuperNodes as processes on this machine,
driven by the ``flwr`` CLI (``fedssl deploy local`` and the deployment tests)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from fedssl.config import Config, ConfigError
from fedssl.deploy.pki import make_certs, make_node_key
from fedssl.deploy.processes import ANSI, DeployError, Proc, ProcessSet, free_port

CONNECTION = "fedssl-local"
READY_LINK = re.compile(r"Uvicorn running on")  # printed once the port is bound
READY_NODE = re.compile(r"SuperNode ID:\s*(\d+)")
RUN_ID = re.compile(r"Successfully started run (\d+)")


def flower_bin_dir() -> Path:
    """Where flower-superlink / flower-supernode / flwr live (this interpreter's bin)."""
    return Path(sys.executable).parent


def flower_exe(name: str) -> str:
    p = flower_bin_dir() / name
    if p.exists():
        return str(p)
    found = shutil.which(name)
    if not found:
        raise ConfigError(f"{name} not found (install flwr in this environment)")
    return found


def app_dir() -> Path:
    """The Flower app (the directory whose pyproject.toml has [tool.flwr.app])."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").exists() or not (root / "server" / "app.py").exists():
        raise ConfigError(f"fedssl's app directory not found at {root} (install fedssl "
                          f"editable: pip install -e .)")
    return root


def toml_value(v: Any) -> str:
    """A value as Flower's --run-config parser reads it (TOML, no spaces unquoted)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    s = str(v)
    if "'" not in s and "\n" not in s:
        return f"'{s}'"
    if '"' in s or "\\" in s:
        raise ConfigError(f"config value {s!r} holds both quote kinds; Flower's --run-config "
                          f"cannot carry it")
    return json.dumps(s)


def run_config_string(cfg: Config) -> str:
    """Every config key as one ``flwr run --run-config`` string (a user algorithm's own
    keys packed into one declared key, :func:`fedssl.protocol.pack_own_keys`)."""
    from fedssl.protocol import pack_own_keys

    return " ".join(f"{k}={toml_value(v)}" for k, v in pack_own_keys(cfg).items())


def node_config_string(node_config: dict[str, Any]) -> str:
    return " ".join(f"{k}={toml_value(v)}" for k, v in node_config.items())


def parse_node_config(text: str) -> dict[str, Any]:
    """Parse a ``--node-config`` string exactly as flower-supernode does."""
    from flwr.common.config import parse_config_args

    try:
        return dict(parse_config_args([text]))
    except Exception as e:  # click.ClickException on malformed TOML
        msg = getattr(e, "message", None) or str(e)
        raise ConfigError(f"--node-config {text!r}: {msg.splitlines()[0]}") from None



# ------------------------------------------------------------------------ the local federation
@dataclass
class LocalFederation:
    """A SuperLink and SuperNodes as local processes, for ``fedssl deploy local`` and
    tests. Use as a context manager: every process is stopped on exit.

    ``link_prefix`` / ``node_prefix`` are prepended to the SuperLink's / the nodes'
    command lines (e.g. ``["ip", "netns", "exec", "ns1"]``); ``host`` is the address the
    SuperLink binds and the nodes and the CLI dial; ``cli_prefix`` wraps ``flwr``."""

    cfg: Config
    workdir: Path
    tls: bool = False
    auth: bool = False
    host: str = "127.0.0.1"
    link_prefix: list[str] = field(default_factory=list)
    node_prefix: list[str] = field(default_factory=list)
    cli_prefix: list[str] = field(default_factory=list)
    app: Path | None = None
    startup_timeout: float = 180.0
    echo: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir).resolve()
        self.app = Path(self.app or app_dir()).resolve()
        self.procs = ProcessSet()
        self.link: Proc | None = None
        self.nodes: dict[str, Proc] = {}
        self.node_ids: dict[str, int] = {}
        self.port = 0
        self.tls = self.tls or self.auth
        self.certs: dict[str, Path] = {}
        self.home = self.workdir / "flwr-home"  # the CLI's FLWR_HOME (config.toml)

    # -- context
    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        self.procs.stop()

    # -- environment
    def env(self, home: Path) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{flower_bin_dir()}{os.pathsep}{env.get('PATH', '')}"
        env["FLWR_HOME"] = str(home)
        env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
        env.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("FEDSSL_NO_DOWNLOAD", "1")
        return env

    @property
    def address(self) -> str:
        h = f"[{self.host}]" if ":" in self.host else self.host
        return f"{h}:{self.port}"

    def _say(self, text: str) -> None:
        if self.echo:
            self.echo(text)

    # -- SuperLink
    def start_superlink(self) -> Proc:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.tls:
            self.certs = make_certs(self.workdir / "certs", [self.host])
        for attempt in range(3):  # the free port may be taken between probe and bind
            self.port = free_port()
            cmd = [*self.link_prefix, flower_exe("flower-superlink"), "--host", self.host,
                   "--port", str(self.port), "--disable-runtime-dependency-installation"]
            if self.tls:
                cmd += ["--ssl-certfile", str(self.certs["server.pem"]),
                        "--ssl-keyfile", str(self.certs["server.key"]),
                        "--ssl-ca-certfile", str(self.certs["ca.crt"])]
            else:
                cmd += ["--insecure"]
            if self.auth:
                cmd += ["--enable-supernode-auth"]
            log = self.workdir / "logs" / "superlink.log"
            offset = log.stat().st_size if log.exists() else 0
            self.link = self.procs.start("superlink", cmd, log, self.env(self.workdir / "home-superlink"),
                                         self.app)
            try:
                self._wait_log(self.link, READY_LINK, "the SuperLink", offset)
                break
            except DeployError:
                text = log.read_text(errors="replace")[offset:]
                if attempt == 2 or not re.search(r"address already in use|Errno 98", text, re.I):
                    raise
                self.procs.kill(self.link, grace=2)
        self._write_connection()
        self._say(f"SuperLink on {self.address} ({'TLS' if self.tls else 'insecure'}"
                  f"{', SuperNode auth' if self.auth else ''}); logs: {self.workdir / 'logs'}")
        return self.link

    def _write_connection(self) -> None:
        import tomli_w

        conn: dict[str, Any] = {"address": self.address}
        if self.tls:
            conn["root-certificates"] = str(self.certs["ca.crt"])
        else:
            conn["insecure"] = True
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "config.toml").write_text(tomli_w.dumps(
            {"superlink": {"default": CONNECTION, CONNECTION: conn}}))

    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        """Run the ``flwr`` CLI against this federation's connection."""
        return subprocess.run([*self.cli_prefix, flower_exe("flwr"), *args], capture_output=True,
                              text=True, timeout=timeout, env=self.procs.env(self.env(self.home)),
                              cwd=self.app)

    # -- SuperNodes
    def register(self, public_key: Path) -> int:
        """Register a SuperNode public key with the SuperLink (``flwr supernode register``)."""
        res = self.flwr("supernode", "register", str(public_key), CONNECTION, "--format", "json")
        try:
            out = json.loads(res.stdout[res.stdout.index("{"):])
            return int(out["node-id"])
        except (ValueError, KeyError, TypeError):
            raise DeployError(f"flwr supernode register {public_key.name} failed: "
                              f"{ANSI.sub('', (res.stdout + res.stderr).strip()).splitlines()[-1:] or res.returncode}") from None

    def start_node(self, name: str, node_config: dict[str, Any], private_key: Path | None = None,
                   wait: bool = True) -> Proc:
        """Start one ``flower-supernode`` with ``node_config`` (a fresh runtime port,
        its own FLWR_HOME), and by default wait until it has joined the SuperLink."""
        from fedssl.data.export import check_node_config

        check_node_config(node_config, self.cfg)  # one-line error before any process starts
        port = free_port()
        cmd = [*self.node_prefix, flower_exe("flower-supernode"), "--superlink", self.address,
               "--port", str(port), "--node-config", node_config_string(node_config)]
        cmd += ["--root-certificates", str(self.certs["ca.crt"])] if self.tls else ["--insecure"]
        if private_key is not None:
            cmd += ["--auth-supernode-private-key", str(private_key)]
        proc = self.procs.start(name, cmd, self.workdir / "logs" / f"{name}.log",
                                self.env(self.workdir / f"home-{name}"), self.app)
        self.nodes[name] = proc
        if wait:
            m = self._wait_log(proc, READY_NODE, f"SuperNode {name}")
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
            self.start_node(f"supernode-{i}", nc, keys.get(i), wait=False)
        for i in range(n):
            name = f"supernode-{i}"
            m = self._wait_log(self.nodes[name], READY_NODE, f"SuperNode {name}")
            self.node_ids[name] = int(m.group(1))
        self._say(f"{n} SuperNodes joined: " + ", ".join(f"partition {i} = node {self.node_ids[f'supernode-{i}']}"
                                                         for i in range(n)))

    def _wait_log(self, proc: Proc, pattern: re.Pattern, what: str, offset: int = 0) -> re.Match:
        deadline = time.time() + self.startup_timeout
        while True:
            try:
                m = pattern.search(proc.log.read_text(errors="replace")[offset:])
            except OSError:
                m = None
            if m:
                return m
            if not proc.alive():
                raise DeployError(f"{what} exited with status {proc.popen.returncode}: {proc.tail(3)}")
            if time.time() > deadline:
                raise DeployError(f"{what} not ready after {self.startup_timeout:.0f} s: {proc.tail(3)}")
            time.sleep(0.2)

    # -- the run
    def start_run(self, stream_to: IO[str] | None = None) -> subprocess.Popen:
        """``flwr run <app> fedssl-local --run-config "<all keys>" --stream`` in the
        background; its output goes to logs/flwr-run.log (and ``stream_to``)."""
        cmd = [*self.cli_prefix, flower_exe("flwr"), "run", str(self.app), CONNECTION,
               "--run-config", run_config_string(self.cfg), "--stream"]
        log = self.workdir / "logs" / "flwr-run.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        popen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 env=self.procs.env(self.env(self.home)), cwd=self.app, start_new_session=True,
                                 stdin=subprocess.DEVNULL)
        self.procs.adopt(Proc("flwr-run", popen, log))

        def pump() -> None:
            with open(log, "a") as fh:
                for line in popen.stdout:  # type: ignore[union-attr]
                    fh.write(line)
                    fh.flush()
                    if stream_to is not None:
                        stream_to.write(line)
                        stream_to.flush()

        t = threading.Thread(target=pump, daemon=True)
        t.start()
        popen._fedssl_pump = t  # type: ignore[attr-defined]
        return popen

    def wait_run(self, popen: subprocess.Popen, timeout: float | None = None) -> dict[str, Any]:
        """Wait for the run started by :meth:`start_run`; returns summary.json."""
        try:
            rc = popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DeployError(f"the run did not finish within {timeout:.0f} s; logs: "
                              f"{self.workdir / 'logs'}") from None
        popen._fedssl_pump.join(timeout=10)  # type: ignore[attr-defined]
        text = ANSI.sub("", (self.workdir / "logs" / "flwr-run.log").read_text(errors="replace"))
        summary = Path(self.cfg.run.out_dir) / "summary.json"
        if rc != 0 or not summary.exists():
            last = [ln for ln in text.splitlines() if ln.strip()][-3:]
            raise DeployError(f"`flwr run` exited with status {rc} without {summary.name} in "
                              f"{self.cfg.run.out_dir}: {' | '.join(s.strip() for s in last)} "
                              f"(logs: {self.workdir / 'logs'})")
        m = RUN_ID.search(text)
        out = json.loads(summary.read_text())
        if m:
            out["flower_run_id"] = int(m.group(1))
        return out

    def run(self, stream_to: IO[str] | None = None, timeout: float | None = None) -> dict[str, Any]:
        return self.wait_run(self.start_run(stream_to), timeout)
