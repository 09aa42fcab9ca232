"""Local processes of a deployment: free ports, and process sets whose whole trees
(process groups, re-parented descendants, tagged strays) are stopped together.

Process trees come from psutil rather than a hand-written /proc walk.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import psutil

ANSI = re.compile(r"\x1b\[[0-9;]*m")


class DeployError(RuntimeError):
    """A deployment process failed to start or the run failed (exit status 1)."""


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


def descendants(pid: int) -> list[int]:
    """All live descendants of ``pid``, children first ([] if ``pid`` is gone)."""
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie is gone for our purposes)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def signal_all(pids: Iterable[int], sig: int) -> None:
    for p in pids:
        try:
            os.kill(p, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def pump(source: IO[str], log: Path, also: IO[str] | None = None) -> threading.Thread:
    """Copy ``source`` (a child's piped output) line by line to ``log`` and to ``also``,
    in a daemon thread: the log is complete while the child runs, and the child never
    blocks on a full pipe. Join the thread once the child has exited."""

    def copy() -> None:
        with open(log, "a") as fh:
            for line in source:
                fh.write(line)
                fh.flush()
                if also is not None:
                    also.write(line)
                    also.flush()

    t = threading.Thread(target=copy, daemon=True)
    t.start()
    return t


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
        me, out = os.getpid(), []
        for p in psutil.process_iter():
            if p.pid == me:
                continue
            try:
                if p.environ().get(self.TAG) == self.tag and alive(p.pid):
                    out.append(p.pid)
            except psutil.Error:
                continue
        return out

    def start(self, name: str, cmd: list[str], log: Path, env: dict[str, str], cwd: Path) -> Proc:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as fh:
            popen = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=self.env(env), cwd=cwd, start_new_session=True)
        return self.adopt(Proc(name, popen, log))

    def adopt(self, proc: Proc) -> Proc:
        """Stop ``proc`` (started elsewhere) with this set."""
        with self._lock:
            self.procs.append(proc)
        return proc

    def kill(self, proc: Proc, grace: float = 10.0) -> None:
        """SIGTERM the tree, SIGKILL what is left after ``grace`` seconds."""
        pid = proc.popen.pid
        tree = descendants(pid)
        _signal_group(pid, signal.SIGTERM)
        signal_all(tree, signal.SIGTERM)
        deadline = time.time() + grace
        while time.time() < deadline and (proc.alive() or any(alive(p) for p in tree)):
            time.sleep(0.1)
        tree = [p for p in tree if alive(p)] + descendants(pid)
        _signal_group(pid, signal.SIGKILL)
        signal_all(tree, signal.SIGKILL)
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
            signal_all(stray, signal.SIGTERM)
            deadline = time.time() + min(grace, 5.0)
            while time.time() < deadline and any(alive(p) for p in stray):
                time.sleep(0.1)
            signal_all(self.tagged(), signal.SIGKILL)
