"""Shared test helpers: the CLI as a user runs it, and tiny real experiments."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FMNIST = Path("/usr/share/datasets/fashion-mnist")

os.environ.setdefault("FEDSSL_NO_DOWNLOAD", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def tiny(out: Path | str, **extra: object) -> dict[str, object]:
    """Overrides for a seconds-long real experiment on synthetic data."""
    base = {
        "data.dataset": "synthetic", "data.num_clients": 4, "data.partition": "iid",
        "data.labeled_ratio": 0.1, "data.max_train_samples": 1200, "data.max_test_samples": 400,
        "federation.rounds": 2, "client.local_steps": 4, "client.batch_size": 16,
        "client.uratio": 2, "run.out_dir": str(out),
    }
    base.update(extra)
    return base


def unlabeled_only(n: int = 12):
    """A client shard of ``n`` random 28x28 images, none labelled (hidden labels kept)."""
    import torch

    from fedssl.data.tensors import ClientData

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g)
    return ClientData(x[:0], torch.zeros(0, dtype=torch.long), x, torch.randint(0, 10, (n,), generator=g),
                      flip=False)


def spy_unlabeled_batches(monkeypatch, algorithm_class) -> list:
    """The shard positions of every unlabeled batch ``algorithm_class.loss`` is given,
    recorded as the loss runs."""
    drawn: list = []
    real_loss = algorithm_class.loss

    def spy(self, model, batch, ctx):
        drawn.append(batch.idx_u.clone())
        return real_loss(self, model, batch, ctx)

    monkeypatch.setattr(algorithm_class, "loss", spy)
    return drawn


def as_set_flags(overrides: dict[str, object]) -> list[str]:
    flags = []
    for k, v in overrides.items():
        flags += ["--set", f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}"]
    return flags


def run_cli(*args: str, timeout: float = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedssl.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def assert_bad_input(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit 2, exactly one line `error: ...` on stderr naming the bad thing, no traceback."""
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], err[-2000:])
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.fixture
def fmnist() -> Path:
    if not (FMNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Debian package dataset-fashion-mnist not installed")
    return FMNIST


def kill9_after_checkpoint(overrides: dict[str, object], out: Path, at_round: int = 2) -> dict:
    """Start ``fedssl run`` with ``overrides`` in its own session, wait for a checkpoint
    of ``at_round`` or later in ``out``, then SIGKILL the run and every process it
    started (Ray included), as a crash would. Returns that checkpoint."""
    import psutil

    from fedssl import runlog

    proc = subprocess.Popen([sys.executable, "-m", "fedssl.cli", "run", "--quiet", *as_set_flags(overrides)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline, ckpt = time.time() + 600, None
    try:
        while time.time() < deadline:
            ckpt = runlog.load_checkpoint(out) if (out / runlog.CHECKPOINT).exists() else None
            if ckpt and ckpt["round"] >= at_round:
                break
            assert proc.poll() is None, "run ended before it could be killed"
            time.sleep(0.2)
        assert ckpt and ckpt["round"] >= at_round, "no checkpoint within 600 s"
        assert not (out / "summary.json").exists(), "too late: the run already finished"
        tree = psutil.Process(proc.pid).children(recursive=True)
        for p in [*tree, psutil.Process(proc.pid)]:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return ckpt


# A seconds-long real grid cell (fedssl bench tests); add "data.dataset" / "data.root".
TINY_GRID_BASE = """
"data.num_clients" = 2
"data.partition" = "iid"
"data.labeled_ratio" = 0.1
"data.max_train_samples" = 600
"data.max_test_samples" = 200
"federation.rounds" = 2
"client.local_steps" = 2
"client.batch_size" = 16
"client.uratio" = 2
"model.name" = "cnn"
"""


def live_processes(field: int, value: int) -> list[int]:
    """Live (non-zombie) pids whose /proc/PID/stat field ``field`` (after the command
    name: 1 = parent pid, 3 = session id) equals ``value``."""
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[field]) == value and fields[0] != "Z":
                pids.append(int(p.name))
    return pids


def wait_for(cond, timeout: float, what: str):
    """Poll ``cond`` until it returns something truthy, which is returned."""
    end = time.time() + timeout
    while time.time() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")



# -- test tiers ---------------------------------------------------------------
#: Names whose use makes a test a system test: it starts a federation, a process or a
#: server. `make test-fast` deselects those (`-m "not system"`); `make test` runs all.
SYSTEM_NAMES = frozenset({"run_cli", "run_experiment", "subprocess", "kill9_after_checkpoint", "run_simulation",
                          "LocalFederation", "ContainerFederation", "BenchRunner", "Popen", "run_notebook",
                          "mlflow_server", "fedssl_run", "run_api"})


def _names(code, found: set[str]) -> None:
    found.update(code.co_names)
    for c in code.co_consts:
        if hasattr(c, "co_names"):
            _names(c, found)


def _starts_system(fn, seen: set[int]) -> bool:
    """Whether ``fn``, or a function or fixture of the test modules it calls, names a
    :data:`SYSTEM_NAMES` entry (followed through module globals, so helpers count)."""
    fn = getattr(fn, "__wrapped__", fn)
    code = getattr(fn, "__code__", None)
    if code is None or id(code) in seen:
        return False
    seen.add(id(code))
    names: set[str] = set()
    _names(code, names)
    if names & SYSTEM_NAMES:
        return True
    glb = getattr(fn, "__globals__", {})
    return any(_starts_system(glb[n], seen) for n in names
               if n in glb and callable(glb[n]) and getattr(glb[n], "__module__", "").startswith(("test", "conftest")))


def pytest_collection_modifyitems(config, items):
    """Mark system tests from what they use (their code, helpers and fixtures), never by hand."""
    for item in items:
        fns = [getattr(item, "function", None)]
        for defs in getattr(item, "_fixtureinfo", None).name2fixturedefs.values() if hasattr(item, "_fixtureinfo") else ():
            fns += [d.func for d in defs]
        seen: set[int] = set()
        if any(f is not None and _starts_system(f, seen) for f in fns):
            item.add_marker(pytest.mark.system)
