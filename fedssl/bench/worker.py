"""The warm worker of ``fedssl bench`` (``python -m fedssl.bench.worker``).

A long-lived child of the bench (own process group) that pays the start-up of a
``fedssl run`` once instead of once per cell:

- it imports torch, torchvision, Ray and Flower once;
- it keeps a local Ray cluster warm (``ray start --head --block``, its child, in its
  process group, under its own temp dir so that no other ``ray.init()`` on the machine
  finds it), started with exactly the resources a cell's own ``ray.init`` would ask
  for (:func:`fedssl.local_ray.local_ray_resources`), and restarted when a cell asks
  for others. Flower's ``RayBackend.terminate`` calls ``ray.shutdown()`` after every
  simulation; against a cluster joined by address that only disconnects the driver,
  so the cluster (GCS, raylet) outlives the cell. Each cell is a new Ray job: its
  client actors are new worker processes, as in a fresh run;
- each cell runs in a process forked from it: ``fedssl run``'s own ``main``
  (:func:`fedssl.run_command.main`) with the same arguments, stdout/stderr appended
  to the cell's log files. Forking gives every cell a pristine copy of the warm
  process -- no cache, RNG state, thread setting, environment variable or logging
  handler of one cell reaches the next -- and a crashing cell (even a segfault) takes
  only its own process down. The worker has one thread and has not initialised Ray,
  CUDA or OpenMP when it forks.

- it reads each cell's dataset once, before forking (``"data"`` in the request), so
  that cells share the decoded arrays instead of decompressing the files each time.

Protocol, one JSON object per line: the bench writes ``{"argv": [fedssl run's
arguments], "stdout": path, "stderr": path, "ray": {"num_cpus": n, "num_gpus": g} |
null, "data": [dataset, root] | null}`` to the worker's stdin and reads ``{"code": exit
status, or -signal}`` back from its stdout. The worker's own messages go to its stderr
(``logs/worker.log``). EOF on stdin: stop the cluster, exit.
SIGINT/SIGTERM: wait for the running cell (it got the signal too), stop, exit 130.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any

# Imported once, before the first fork: what a cell (``fedssl run``) imports. Not
# fedssl.server.app: it configures the "fedssl" logger at import when nobody has, which
# `fedssl run` does first (the order matters).
PRELOAD = ("numpy", "pandas", "scipy", "rich", "torch", "torchvision", "ray", "flwr.app",
           "flwr.clientapp", "flwr.serverapp", "flwr.simulation", "fedssl.run_command", "fedssl.simulation",
           "fedssl.server.loop", "fedssl.client.app", "flwr.server.superlink.fleet.vce.backend.raybackend",
           "rich.logging")
_READY = "Ray runtime started."
TEMP_PREFIX = "fedssl-ray-"


def _log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} worker {os.getpid()}: {msg}", file=sys.stderr, flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WarmRay:
    """One local Ray cluster kept across cells (``ray start --head --block``)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.resources: dict[str, int] | None = None
        self.address = ""
        self.temp = ""
        self.out_path = ""
        self.broken = False  # it failed to start once: cells start their own Ray from then on

    def start(self, resources: dict[str, int]) -> None:
        """Start the cluster in the background (``ready`` waits for it)."""
        self.stop()
        port = _free_port()
        # short (Ray's socket paths are bounded); named after the worker, so that the bench
        # removes it when the worker was killed before it could
        self.temp = tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-")
        self.out_path = os.path.join(self.temp, "ray_start.log")
        cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
               "--node-ip-address=127.0.0.1", f"--port={port}", f"--num-cpus={resources['num_cpus']}",
               f"--num-gpus={resources['num_gpus']}", "--include-dashboard=false", "--disable-usage-stats",
               f"--temp-dir={self.temp}", f"--dashboard-agent-listen-port={_free_port()}",
               f"--ray-client-server-port={_free_port()}",
               # OS-assigned worker ports, as ray.init gives: `ray start` would hand out
               # 10002, 10003, ... and two benches at once then bind the same port (one
               # cell died of "Address already in use" on port 10002)
               "--min-worker-port=0", "--max-worker-port=0"]
        # What fedssl.simulation sets before its own ray.init, for the raylet and workers.
        env = {"RAY_DEDUP_LOGS": "0", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0", **os.environ,
               "RAY_USAGE_STATS_ENABLED": "0"}
        with open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         env=env)
        self.resources, self.address = dict(resources), f"127.0.0.1:{port}"
        _log(f"starting a Ray cluster at {self.address} with {resources}")

    def ready(self, timeout: float = 180.0) -> bool:
        """Wait until the cluster is up; False (and stopped) when it did not come up."""
        deadline = time.monotonic() + timeout
        while self.proc is not None and self.proc.poll() is None and time.monotonic() < deadline:
            try:
                with open(self.out_path, errors="replace") as f:
                    if _READY in f.read():
                        return True
            except OSError:
                pass
            time.sleep(0.1)
        _log(f"the Ray cluster did not start; cells start their own (see {self.out_path})")
        self.stop(keep_logs=True)
        self.broken = True
        return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, keep_logs: bool = False) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()  # `ray start --block` stops its cluster on SIGTERM
                try:
                    self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None
        if self.temp and not keep_logs:
            shutil.rmtree(self.temp, ignore_errors=True)
        self.resources, self.address, self.temp = None, "", ""


def _preload() -> None:
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - the cell that needs it reports it
            _log(f"could not preload {name}: {type(e).__name__}: {e}")


def _preload_data(data: list[str] | None) -> None:
    if data:
        try:
            from fedssl.data.sources.load import preload

            preload(*data)
        except Exception as e:  # noqa: BLE001 - the cell reports a bad dataset itself
            _log(f"could not preload the dataset {data}: {type(e).__name__}: {e}")


def _exit_code(e: SystemExit) -> int:
    if e.code is None or isinstance(e.code, int):
        return int(e.code or 0)
    print(e.code, file=sys.stderr)
    return 1


def _run_cell(req: dict[str, Any], private_fds: tuple[int, ...], handlers: dict[int, Any],
              address: str) -> None:
    """In the forked child: become ``fedssl run ARGV`` writing to the cell's logs; never returns."""
    code = 1
    try:
        for fd in private_fds:  # the bench must see EOF when the worker dies, whatever we do
            os.close(fd)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        null = os.open(os.devnull, os.O_RDONLY)
        out = os.open(req["stdout"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        err = os.open(req["stderr"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        for src, dst in ((null, 0), (out, 1), (err, 2)):
            os.dup2(src, dst)
            os.close(src)
        if address:
            from fedssl.local_ray import WARM_RAY_ENV

            os.environ[WARM_RAY_ENV] = address
        sys.argv = ["fedssl", "run", *req["argv"]]
        from fedssl.run_command import main

        code = main(list(req["argv"]))
    except SystemExit as e:
        code = _exit_code(e)
    except KeyboardInterrupt:
        code = 130
    except BaseException:  # noqa: BLE001 - as an uncaught exception ends `fedssl run`
        traceback.print_exc()
        code = 1
    finally:
        try:
            atexit._run_exitfuncs()  # what a fresh process runs at exit (ray.shutdown ...)
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code & 0xFF if code >= 0 else 1)


def _fork_cell(req: dict[str, Any], private_fds: tuple[int, ...], handlers: dict[int, Any],
               address: str) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        _run_cell(req, private_fds, handlers, address)
    return pid


def _wait(pid: int) -> int:
    """The cell's exit status (negative: killed by that signal), even when interrupted."""
    interrupted = None
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except KeyboardInterrupt as e:  # the cell got the signal too; let it finish its way
            interrupted = e
    if interrupted is not None:
        raise interrupted
    return os.waitstatus_to_exitcode(status)


def serve(requests, replies, private_fds: tuple[int, ...], handlers: dict[Any, Any]) -> None:
    ray_cluster = WarmRay()
    preloaded = False
    try:
        for line in requests:
            req = json.loads(line)
            want = req.get("ray") if not ray_cluster.broken else None
            if want and not (ray_cluster.alive() and ray_cluster.resources == want):
                ray_cluster.start(want)  # in the background while the modules load
            if not preloaded:
                _preload()
                preloaded = True
            _preload_data(req.get("data"))
            address = ray_cluster.address if want and ray_cluster.ready() else ""
            pid = _fork_cell(req, private_fds, handlers, address)
            code = _wait(pid)
            replies.write(json.dumps({"code": code}) + "\n")
            replies.flush()
    finally:
        ray_cluster.stop()


def main() -> int:
    # The protocol gets private copies of stdin/stdout; fd 0 becomes /dev/null and fd 1
    # the worker's log, so that nothing a library prints can corrupt the protocol.
    proto_in, proto_out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    handlers = {signal.SIGINT: signal.getsignal(signal.SIGINT), signal.SIGTERM: signal.getsignal(signal.SIGTERM)}
    if handlers[signal.SIGINT] is not signal.SIG_IGN:
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    requests = os.fdopen(proto_in, "r", encoding="utf-8")
    replies = os.fdopen(proto_out, "w", encoding="utf-8")
    _log("ready")
    try:
        serve(requests, replies, (proto_in, proto_out), handlers)
    except KeyboardInterrupt:
        _log("interrupted")
        return 130
    except BrokenPipeError:  # the bench is gone
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
