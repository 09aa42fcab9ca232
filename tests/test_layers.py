"""Static checks in the suite: the import layers (import-linter contracts in
pyproject.toml), ruff, and mypy on the core (fedssl/)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

BIN = Path(sys.executable).parent


def run(*cmd: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def test_import_layer_contracts_are_kept():
    proc = run(str(BIN / "lint-imports"))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout and "KEPT" in proc.stdout


def test_ruff_is_clean():
    proc = run(str(BIN / "ruff"), "check", ".")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_mypy_on_the_core():
    proc = run(sys.executable, "-m", "mypy")  # files and settings: [tool.mypy] in pyproject.toml
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "Success" in proc.stdout


def test_core_does_not_import_its_adapters_when_used():
    """Importing the core's public entry points loads none of server/, client/,
    strategies/ or Flower's ServerApp/ClientApp runtime."""
    code = ("import sys, fedssl.simulation, fedssl.protocol, fedssl.seeding, fedssl.sampling, fedssl.cli;"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('server', 'client', 'strategies')"
            " or m.startswith(('flwr.serverapp', 'flwr.clientapp', 'flwr.simulation'))];"
            "print(bad); sys.exit(1 if bad else 0)")
    proc = run(sys.executable, "-c", code, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
