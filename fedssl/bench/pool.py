"""The bench's side of its warm worker (:mod:`fedssl.bench.worker`): start it, hand it
one cell at a time, notice when it dies, stop it with everything it started."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from collections.abc import Callable


class WorkerDied(Exception):
    """The worker itself ended while it ran a cell (``code``: its exit status or -signal)."""

    def __init__(self, code: int) -> None:
        super().__init__(f"the warm worker ended with status {code}")
        self.code = code


def terminate_group(proc: subprocess.Popen) -> None:
    """Stop a child and everything it started (its own process group): SIGINT, then
    SIGTERM, then SIGKILL, and SIGKILL for stragglers of the group (Ray workers ...)."""
    old = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread() else None
    try:
        for sig, wait in ((signal.SIGINT, 8.0), (signal.SIGTERM, 4.0), (signal.SIGKILL, 4.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)


def main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _remove_temp(pid: int) -> None:
    """The Ray temp dir of a worker that could not remove it itself (killed)."""
    import shutil
    import tempfile

    from fedssl.bench.worker import TEMP_PREFIX

    for d in Path(tempfile.gettempdir()).glob(f"{TEMP_PREFIX}{pid}-*"):
        shutil.rmtree(d, ignore_errors=True)


class WarmWorker:
    """A ``python -m fedssl.bench.worker`` child in its own session (process group)."""

    def __init__(self, log: Path, env: dict[str, str]) -> None:
        self.log, self.env = log, env
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "fedssl.bench.worker"], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=err, env=self.env,
                                         start_new_session=True)

    def run(self, argv: list[str], stdout: Path, stderr: Path, ray: dict[str, int] | None,
            on_wait: Callable[[], None] | None = None, data: tuple[str, str] | None = None) -> int:
        """Run ``fedssl ARGV`` in the worker; its exit status (negative: killed by that
        signal). ``data`` (dataset, root): read by the worker before it forks the cell.
        Raises :class:`WorkerDied` when the worker itself ends meanwhile."""
        if self.proc is None:
            self.start()
        proc = self.proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        req: dict[str, Any] = {"argv": argv, "stdout": str(stdout), "stderr": str(stderr), "ray": ray,
                               "data": list(data) if data else None}
        try:
            proc.stdin.write((json.dumps(req) + "\n").encode())
            proc.stdin.flush()
        except BrokenPipeError:
            raise WorkerDied(self._reap()) from None
        while True:
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if ready:
                line = proc.stdout.readline()
                if not line:
                    raise WorkerDied(self._reap())
                return int(json.loads(line)["code"])
            if on_wait:
                on_wait()

    def _reap(self) -> int:
        """The dead worker's status; what it left behind in its group is killed."""
        proc, self.proc = self.proc, None
        assert proc is not None
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # stdout closed but alive: make it dead
            terminate_group(proc)
            code = proc.wait()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        _remove_temp(proc.pid)
        return code

    def stop(self, timeout: float = 60.0) -> None:
        """Close it: it stops its Ray cluster and exits; anything left is killed."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.close()
        except OSError:
            pass
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is None:
            terminate_group(proc)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        _remove_temp(proc.pid)
        proc.stdout.close()

    def kill(self) -> None:
        """Stop it now (Ctrl-C, a cell killed by a signal): its whole process group."""
        proc, self.proc = self.proc, None
        if proc is not None:
            terminate_group(proc)
            _remove_temp(proc.pid)
            if proc.stdout is not None:
                proc.stdout.close()
