"""Real deployments with Flower's Deployment Engine (SuperLink + SuperNodes).

``fedssl deploy local --clients N``
    starts ``flower-superlink`` and N ``flower-supernode`` processes on this machine
    (127.0.0.1, free ports), gives every SuperNode its own exported data shard
    (``fedssl data export``) as node config ``data-dir``, writes a temporary
    ``$FLWR_HOME/config.toml`` SuperLink connection, runs
    ``flwr run <app> <connection> --run-config "<every config key>" --stream`` and
    stops every process it started (their whole process trees), also on Ctrl-C,
    SIGTERM and failure. The ServerApp writes the same files as ``fedssl run``
    (metrics.csv, summary.json, config.toml) to ``--out``; the processes' logs go to
    ``--out/deploy/``. ``--tls`` serves the SuperLink over TLS with a fresh local CA;
    ``--auth`` (implies ``--tls``) turns on SuperNode authentication: one EC P-384 key
    pair per node, public keys registered with ``flwr supernode register``, private
    keys passed with ``--auth-supernode-private-key``.

``fedssl deploy certs --out DIR``
    a CA and a SuperLink server certificate (SANs 127.0.0.1, localhost and any
    ``--host``), and prints the matching flags.

``fedssl deploy node-keys --out DIR --count N``
    SuperNode authentication key pairs (OpenSSH format, NIST P-384).

``fedssl node check`` / ``fedssl node start -- <flower-supernode flags>``
    validate a SuperNode's ``--node-config`` (partition-id in [0, num-partitions),
    data-dir holding this partition's shard, optionally against a run config) and
    exit 2 with one ``error:`` line when it is wrong; ``start`` then execs
    ``flower-supernode`` with the flags unchanged. Flower itself cannot reject a node
    config at SuperNode start (it only reaches the ClientApp with the first message).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from fedssl.config import Config, ConfigError

CONNECTION = "fedssl-local"
READY_LINK = re.compile(r"Uvicorn running on")  # printed once the port is bound
READY_NODE = re.compile(r"SuperNode ID:\s*(\d+)")
RUN_ID = re.compile(r"Successfully started run (\d+)")


class DeployError(RuntimeError):
    """A deployment process failed to start or the run failed (exit status 1)."""


# ------------------------------------------------------------------------ helpers
def free_port(host: str = "127.0.0.1", avoid: Iterable[int] = ()) -> int:
    """A TCP port that is free on ``host`` now (bound and released; the kernel does
    not hand the same ephemeral port out again right away)."""
    avoid = set(avoid)
    for _ in range(100):
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in avoid:
            return port
    raise DeployError("no free TCP port found")


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    ports: list[int] = []
    for _ in range(n):
        ports.append(free_port(host, ports))
    return ports


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
    root = Path(__file__).resolve().parents[1]
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
    """Every config key as one ``flwr run --run-config`` string."""
    return " ".join(f"{k}={toml_value(v)}" for k, v in cfg.to_flat().items())


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


def _descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (Linux /proc), children first."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(d.name))
    out, stack = [], [pid]
    while stack:
        for c in children.get(stack.pop(), []):
            out.append(c)
            stack.append(c)
    return out


def _kill(pids: Iterable[int], sig: int) -> None:
    for p in pids:
        try:
            os.kill(p, sig)
        except (ProcessLookupError, PermissionError):
            pass


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, n: int = 5) -> str:
        try:
            lines = [ln for ln in self.log.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        return " | ".join(ANSI.sub("", ln).strip() for ln in lines[-n:])


ANSI = re.compile(r"\x1b\[[0-9;]*m")


class ProcessSet:
    """Processes started in their own sessions; :meth:`stop` ends each whole tree:
    its process group, the descendants that left it (Flower starts SuperExec in a new
    session), and finally any process still carrying this set's ``FEDSSL_DEPLOY_TAG``
    environment value (inherited by every descendant, even one re-parented to init)."""

    TAG = "FEDSSL_DEPLOY_TAG"

    def __init__(self) -> None:
        import uuid

        self.procs: list[Proc] = []
        self._lock = threading.Lock()
        # inherited when set, so a caller (a test) can find and end our whole tree too
        self.tag = os.environ.get(self.TAG) or uuid.uuid4().hex

    def env(self, env: dict[str, str]) -> dict[str, str]:
        return {**env, self.TAG: self.tag}

    def tagged(self) -> list[int]:
        """Live processes (other than this one) started from this set."""
        needle = f"{self.TAG}={self.tag}".encode()
        me, out = os.getpid(), []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit() or int(d.name) == me:
                continue
            try:
                if needle in (d / "environ").read_bytes().split(b"\0") and _exists(int(d.name)):
                    out.append(int(d.name))
            except OSError:
                continue
        return out

    def start(self, name: str, cmd: list[str], log: Path, env: dict[str, str], cwd: Path) -> Proc:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as fh:
            popen = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=self.env(env), cwd=cwd, start_new_session=True)
        proc = Proc(name, popen, log)
        with self._lock:
            self.procs.append(proc)
        return proc

    def kill(self, proc: Proc, grace: float = 10.0) -> None:
        """SIGTERM the tree, SIGKILL what is left after ``grace`` seconds."""
        pid = proc.popen.pid
        tree = _descendants(pid)
        try:
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
        _kill(tree, signal.SIGTERM)
        deadline = time.time() + grace
        while time.time() < deadline and (proc.alive() or any(_exists(p) for p in tree)):
            time.sleep(0.1)
        tree = [p for p in tree if _exists(p)] + _descendants(pid)
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        _kill(tree, signal.SIGKILL)
        try:
            proc.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def stop(self, grace: float = 10.0) -> None:
        with self._lock:
            procs = list(reversed(self.procs))
        # SuperNodes first, then the SuperLink, so nodes do not retry against a dead link
        threads = [threading.Thread(target=self.kill, args=(p, grace)) for p in procs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stray = self.tagged()
        if stray:
            _kill(stray, signal.SIGTERM)
            deadline = time.time() + min(grace, 5.0)
            while time.time() < deadline and any(_exists(p) for p in stray):
                time.sleep(0.1)
            _kill(self.tagged(), signal.SIGKILL)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


# ------------------------------------------------------------------------ certificates and keys
def make_certs(out: str | Path, hosts: Iterable[str] = (), days: int = 365) -> dict[str, Path]:
    """A self-signed CA and a SuperLink server certificate signed by it, with SANs
    127.0.0.1, ::1, localhost and ``hosts``. Files: ca.crt, ca.key, server.pem,
    server.key (keys are written 0600)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    until = now + datetime.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedssl local CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now).not_valid_after(until)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    names: list[x509.GeneralName] = []
    seen: set[str] = set()
    for h in ["127.0.0.1", "::1", "localhost", *hosts]:
        if not h or h in seen:
            continue
        seen.add(h)
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    key = ec.generate_private_key(ec.SECP384R1())
    cn = next((h for h in hosts if h), "localhost")
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(until)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    files = {"ca.crt": ca.public_bytes(pem), "server.pem": cert.public_bytes(pem)}
    keys = {"ca.key": ca_key, "server.key": key}
    paths = {}
    for name, data in files.items():
        (out / name).write_bytes(data)
        paths[name] = out / name
    for name, k in keys.items():
        _write_secret(out / name, k.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
        paths[name] = out / name
    return paths


def _write_secret(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def make_node_key(out: str | Path, name: str) -> tuple[Path, Path]:
    """A SuperNode authentication key pair (NIST P-384, OpenSSH format, as
    ``flower-supernode --auth-supernode-private-key`` and ``flwr supernode register``
    expect): ``out/name`` (private, 0600) and ``out/name.pub``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                             serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                        serialization.PublicFormat.OpenSSH)
    _write_secret(out / name, priv)
    (out / f"{name}.pub").write_bytes(pub + f" {name}\n".encode())
    return out / name, out / f"{name}.pub"


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
        proc = Proc("flwr-run", popen, log)
        with self.procs._lock:
            self.procs.procs.append(proc)

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


# ------------------------------------------------------------------------ commands
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


def add_parser(subparsers: Any) -> None:
    d = subparsers.add_parser("deploy", help="real deployments (SuperLink + SuperNodes)",
                              description="Run fedssl on Flower's Deployment Engine.")
    dsub = d.add_subparsers(dest="deploy_command", required=True, parser_class=type(d))

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

    k = dsub.add_parser("node-keys", help="SuperNode authentication key pairs",
                        description="Write PREFIX-<i> (private) and PREFIX-<i>.pub (public) EC P-384 "
                                    "keys in OpenSSH format to DIR.")
    k.add_argument("--out", required=True, metavar="DIR")
    k.add_argument("--count", type=int, default=1)
    k.add_argument("--prefix", default="supernode")
    k.add_argument("--overwrite", action="store_true")
    k.set_defaults(func=cmd_node_keys)

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


__all__ = ["LocalFederation", "ProcessSet", "free_port", "free_ports", "make_certs", "make_node_key",
           "run_config_string", "add_parser", "DeployError"]
