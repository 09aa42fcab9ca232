"""The Python API's surface: light to import, one exception type with the CLI's message,
typed. (Its runs are compared with ``fedssl run``'s in tests/test_tracking.py.)"""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest

import fedssl
from tests.conftest import ROOT, run_cli


def test_import_fedssl_stays_light_and_exposes_run_and_bench():
    code = ("import sys, fedssl; fedssl.run, fedssl.Result, fedssl.ConfigError; import fedssl.bench.grid;"
            "assert callable(fedssl.bench), fedssl.bench;"
            "heavy = [m for m in ('torch', 'flwr', 'ray', 'pandas', 'mlflow') if m in sys.modules];"
            "print(heavy); sys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("overrides", [
    {"data.partition": "bogus"},
    {"data.partition": "flwr:NoSuchPartitioner", "data.dataset": "synthetic"},
    {"run.tracking": "wandb"},
    {"federation.rounds": 0},
])
def test_api_errors_carry_the_clis_one_line_message(tmp_path, overrides):
    overrides = {**overrides, "run.out_dir": str(tmp_path / "run")}
    with pytest.raises(fedssl.ConfigError) as err:
        fedssl.run(**overrides)
    flags = [f for k, v in overrides.items() for f in ("--set", f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}")]
    proc = run_cli("run", *flags, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {err.value}"
    assert "\n" not in str(err.value)


def test_overrides_take_dotted_keys_double_underscores_dicts_and_files(tmp_path):
    from fedssl.api import _overrides

    toml = tmp_path / "c.toml"
    toml.write_text("[data]\nalpha = 0.2\n")
    assert _overrides(toml, {"data__num_clients": 3}) == (str(toml), {"data.num_clients": 3})
    assert _overrides({"data": {"alpha": 0.1}}, {"data.alpha": 0.3}) == (None, {"data.alpha": 0.3})
    with pytest.raises(fedssl.ConfigError, match="expected a TOML file path"):
        _overrides(42, {})  # type: ignore[arg-type]


def test_py_typed_ships():
    assert (ROOT / "fedssl" / "py.typed").exists()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "py.typed" in project["tool"]["setuptools"]["package-data"]["fedssl"]
