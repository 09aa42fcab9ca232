"""What every deployed federation shares: the ``flwr`` CLI's connection to the
SuperLink, node registration, submitting the run and waiting for its summary.

:class:`Federation` is the base of :class:`~fedssl.deploy.local.LocalFederation`
(processes on this machine) and :class:`~fedssl.deploy.containers.ContainerFederation`
(containers); a subclass starts the SuperLink and the SuperNodes its own way and says
where the ServerApp's files appear on this machine.
"""

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
from pathlib import Path
from typing import IO, Any

from fedssl.config import Config, ConfigError
from fedssl.deploy.processes import ANSI, DeployError, Proc, ProcessSet, pump

RUN_ID = re.compile(r"Successfully started run (\d+)")
Echo = Callable[[str], None]


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


class Federation:
    """A SuperLink, SuperNodes and the ``flwr`` CLI that submits one run to them.

    Args:
        cfg: the run's config (``data.num_clients`` SuperNodes, one shard each).
        workdir: this federation's files: ``logs/`` (``flwr-run.log`` and one log per
            process or container), ``certs/`` (with ``tls``), ``keys/`` (with ``auth``)
            and ``flwr-home/config.toml`` (the CLI's SuperLink connection).
        tls: serve the SuperLink over TLS with a fresh local CA.
        auth: SuperNode authentication, one registered key pair per node (implies ``tls``).
        echo: called with one line per step (None: silent).
        startup_timeout: seconds a process or container may take to become ready.

    Use as a context manager: :meth:`stop` ends everything it started, also on error.
    """

    #: the connection's name in ``flwr-home/config.toml`` (``flwr run <app> <connection>``)
    connection = "fedssl"

    def __init__(self, cfg: Config, workdir: Path, *, tls: bool = False, auth: bool = False,
                 echo: Echo | None = None, startup_timeout: float = 180.0) -> None:
        self.cfg = cfg
        self.workdir = Path(workdir).resolve()
        self.auth = auth
        self.tls = tls or auth
        self.echo = echo
        self.startup_timeout = startup_timeout
        self.home = self.workdir / "flwr-home"
        self.logs = self.workdir / "logs"
        self.certs = self.workdir / "certs"
        self.procs = ProcessSet()  # the flwr CLI's run and, for local federations, every process
        self.host = "127.0.0.1"  # where this machine reaches the SuperLink
        self.port = 0
        self.app = app_dir()
        self.cli_prefix: list[str] = []  # wraps the flwr CLI (e.g. ``ip netns exec ns``)
        self._pump: threading.Thread | None = None

    # -- what a subclass says
    @property
    def out(self) -> Path:
        """Where the ServerApp's metrics.csv and summary.json appear on this machine."""
        return Path(self.cfg.run.out_dir)

    def submitted_config(self) -> Config:
        """The config sent with ``flwr run`` (paths as the ServerApp sees them)."""
        return self.cfg

    # -- lifecycle
    def __enter__(self) -> Federation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """End every process this federation started (whole process trees)."""
        self.procs.stop()

    def _say(self, text: str) -> None:
        if self.echo:
            self.echo(text)

    @property
    def address(self) -> str:
        h = f"[{self.host}]" if ":" in self.host else self.host
        return f"{h}:{self.port}"

    def env(self, home: Path) -> dict[str, str]:
        """The environment of a Flower process or CLI call whose FLWR_HOME is ``home``."""
        env = dict(os.environ)
        env["PATH"] = f"{flower_bin_dir()}{os.pathsep}{env.get('PATH', '')}"
        env["FLWR_HOME"] = str(home)
        env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
        env.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("FEDSSL_NO_DOWNLOAD", "1")
        return env

    def wait_for(self, pattern: str | re.Pattern, read: Callable[[], str], gone: Callable[[], str | None],
                 what: str, poll: float = 0.2) -> re.Match:
        """Poll ``read()`` until ``pattern`` shows up in it. ``gone()`` says why ``what``
        can no longer get there (None while it runs); both that and the startup timeout
        raise DeployError with the last lines of ``read()``."""
        deadline = time.time() + self.startup_timeout
        while True:
            text = read()
            m = re.search(pattern, text)
            if m:
                return m
            tail = " | ".join([ANSI.sub("", ln).strip() for ln in text.splitlines() if ln.strip()][-3:])
            why = gone()
            if why is not None:
                raise DeployError(f"{what} {why}: {tail}")
            if time.time() > deadline:
                raise DeployError(f"{what} not ready after {self.startup_timeout:.0f} s: {tail}")
            time.sleep(poll)

    # -- the flwr CLI
    def write_connection(self) -> None:
        """``flwr-home/config.toml``: this federation's SuperLink as the default connection."""
        import tomli_w

        conn: dict[str, Any] = {"address": self.address}
        if self.tls:
            conn["root-certificates"] = str(self.certs / "ca.crt")
        else:
            conn["insecure"] = True
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "config.toml").write_text(tomli_w.dumps(
            {"superlink": {"default": self.connection, self.connection: conn}}))

    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        """Run the ``flwr`` CLI against this federation's connection."""
        return subprocess.run([*self.cli_prefix, flower_exe("flwr"), *args], capture_output=True,
                              text=True, timeout=timeout, env=self.procs.env(self.env(self.home)),
                              cwd=self.app, check=False)

    def register(self, public_key: Path, attempts: int = 3) -> int:
        """Register a SuperNode public key with the SuperLink (``flwr supernode register``).
        A SuperLink that has just started may not answer its control API yet, so a
        failure is retried (``attempts`` in all, 2 s apart) unless the key is already known."""
        for attempt in range(1, attempts + 1):
            res = self.flwr("supernode", "register", str(public_key), self.connection, "--format", "json")
            out: Any = None
            try:
                out = json.loads(res.stdout[res.stdout.index("{"):])
                return int(out["node-id"])
            except (ValueError, KeyError, TypeError):
                said = out.get("error-message") if isinstance(out, dict) and out.get("error-message") else \
                    ANSI.sub("", (res.stdout + res.stderr).strip()).splitlines()[-1:] or res.returncode
                if attempt == attempts or "already" in str(said).lower():
                    raise DeployError(f"flwr supernode register {public_key.name} failed: {said}") from None
                time.sleep(2.0)
        raise AssertionError("unreachable")

    # -- the run
    def start_run(self, stream_to: IO[str] | None = None) -> subprocess.Popen:
        """``flwr run <app> <connection> --run-config "<all keys>" --stream`` in the
        background; its output goes to logs/flwr-run.log (and ``stream_to``)."""
        cmd = [*self.cli_prefix, flower_exe("flwr"), "run", str(self.app), self.connection,
               "--run-config", run_config_string(self.submitted_config()), "--stream"]
        log = self.logs / "flwr-run.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        popen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 env=self.procs.env(self.env(self.home)), cwd=self.app,
                                 start_new_session=True, stdin=subprocess.DEVNULL)
        self.procs.adopt(Proc("flwr-run", popen, log))
        assert popen.stdout is not None
        self._pump = pump(popen.stdout, log, stream_to)
        return popen

    def wait_run(self, popen: subprocess.Popen, timeout: float | None = None) -> dict[str, Any]:
        """Wait for the run started by :meth:`start_run`; returns its summary.json (with
        ``flower_run_id``), or raises DeployError naming the last lines of its log."""
        try:
            rc = popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DeployError(f"the run did not finish within {timeout:.0f} s; logs: {self.logs}") from None
        if self._pump is not None:
            self._pump.join(timeout=10)
        text = ANSI.sub("", (self.logs / "flwr-run.log").read_text(errors="replace"))
        summary = self.out / "summary.json"
        if rc != 0 or not summary.exists():
            last = [ln.strip() for ln in text.splitlines() if ln.strip()][-3:]
            raise DeployError(f"`flwr run` exited with status {rc} without {summary.name} in "
                              f"{self.out}: {' | '.join(last)} (logs: {self.logs})")
        out = json.loads(summary.read_text())
        m = RUN_ID.search(text)
        if m:
            out["flower_run_id"] = int(m.group(1))
        return out

    def run(self, stream_to: IO[str] | None = None, timeout: float | None = None) -> dict[str, Any]:
        return self.wait_run(self.start_run(stream_to), timeout)
