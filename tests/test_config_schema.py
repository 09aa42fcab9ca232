"""The config schema is the one source: pyproject, README, `fedssl config` and the
validation all come from it, and none of it needs torch."""

from __future__ import annotations

import logging
import subprocess
import sys
import tomllib

import pytest

from fedssl.config import ConfigError, algorithm_keys, flatten, keys, render, resolve, shared_keys
from tests.conftest import ROOT, assert_bad_input, run_cli


def test_pyproject_table_matches_schema():
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    want = {k.name: k.flwr_default for k in keys().values()} | {render.OWN_KEYS: ""}
    assert flatten(table) == want, "run `python -m fedssl.config --write` to regenerate pyproject.toml"
    assert render.replace_pyproject((ROOT / "pyproject.toml").read_text()) == (ROOT / "pyproject.toml").read_text()


def test_readme_table_matches_schema():
    text = (ROOT / "README.md").read_text()
    assert render.readme_table() in text, "run `python -m fedssl.config --write` to regenerate README.md"
    for name in keys():
        assert f"| `{name}` |" in text


def test_replace_pyproject_rewrites_a_stale_table():
    stale = '[project]\nname = "x"\n\n[tool.flwr.app.config]\ndata.dataset = "cifar10"\nold.key = 1\n'
    new = render.replace_pyproject(stale)
    assert new.startswith('[project]\nname = "x"\n\n[tool.flwr.app.config]\n')
    assert "old.key" not in new and flatten(tomllib.loads(new)["tool"]["flwr"]["app"]["config"]) == {
        k.name: k.flwr_default for k in keys().values()} | {render.OWN_KEYS: ""}


def test_config_import_needs_no_torch_or_flower():
    code = ("import sys, fedssl.config as c; c.resolve(None, {'client.algorithm': 'orca', "
            "'data.seen_classes': '6'}); from fedssl.config import render; render.commented_toml(c.Config()); "
            "from fedssl.registry import ALGORITHMS as A; [A[n] for n in A]; c.keys(); "
            "bad = [m for m in ('torch', 'flwr', 'numpy') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_algorithm_declares_itself_in_its_file():
    """Each registered algorithm validates through its own declarations: its section
    holds exactly its params_class's fields, and its shared overrides are [client] keys."""
    import dataclasses

    from fedssl.algorithms import Params
    from fedssl.registry import ALGORITHMS
    from fedssl.config import algorithm_class, algorithm_keys

    assert {"supervised", "fixmatch", "meanteacher", "uda", "shrinkmatch", "semifl", "fedsto", "orca",
            "fedossl"} <= set(ALGORITHMS)
    for name in ALGORITHMS:
        cls = algorithm_class(name)
        assert issubclass(cls.params_class, Params) and cls.params_class.__dataclass_params__.frozen, name
        fields = [f.name for f in dataclasses.fields(cls.params_class)]
        assert [k.rpartition(".")[2] for k in algorithm_keys(cls)] == fields, name
        assert all(k.startswith(f"client.{name}.") for k in algorithm_keys(cls)), name
        assert "loss" in cls.metric_keys and len(set(cls.metric_keys)) == len(cls.metric_keys), name
        cfg = resolve(None, {"client.algorithm": name, "data.seen_classes": 6 if cls.open_world else 0})
        assert type(cfg.algo_params) is cls.params_class and cfg.algorithm_section == f"client.{name}"


def test_every_key_has_help_and_a_valid_default():
    for k in keys().values():
        assert k.help and "\n" not in k.help, k.name
    resolve()  # the defaults themselves validate


def test_fedssl_config_prints_resolved_commented_toml(tmp_path):
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text("[federation]\nrounds = 7\n")
    proc = run_cli("config", "--config", str(cfg_file), "--set", "client.lr=0.1")
    assert proc.returncode == 0, proc.stderr
    parsed = tomllib.loads(proc.stdout)
    want = resolve(str(cfg_file), {"client.lr": "0.1"})
    assert parsed == want.to_dict() and parsed["federation"]["rounds"] == 7
    lines = proc.stdout.splitlines()
    shown = {**shared_keys(), **algorithm_keys(want.algorithm_class)}
    assert "[client.fixmatch]" in lines and "[client.semifl]" not in lines  # the chosen algorithm's only
    for k in shown.values():  # every key line is preceded by its help line
        section, _, name = k.name.rpartition(".")
        start = lines.index(f"[{section}]")
        i = next(j for j in range(start, len(lines)) if lines[j].startswith(f"{name} = "))
        assert lines[i - 1].startswith(f"# {k.help}"), k.name
    assert_bad_input(run_cli("config", "--set", "client.lrr=1"), "did you mean 'client.lr'")


@pytest.mark.parametrize("flat, needle", [
    ({"data.globally_unseen": 1, "data.seen_classes": 6}, "only applies with data.partition=openworld"),
    ({"faults.mode": "crash,nann", "faults.clients": "0,1"}, "did you mean 'nan'"),
    ({"client.momentum": 1.5}, "client.momentum must be in [0, 1), got 1.5"),
    ({"client.algorithm": "fixmatc"}, "did you mean 'fixmatch'"),
])
def test_schema_errors_are_one_line(flat, needle):
    with pytest.raises(ConfigError) as e:
        resolve(None, flat)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_globally_unseen_under_openworld_is_accepted():
    cfg = resolve(None, {"data.partition": "openworld", "data.seen_classes": 6, "data.globally_unseen": 1})
    assert cfg.data.globally_unseen == 1


def test_fault_mode_with_spaces_is_normalised_and_injected():
    from fedssl.faults import apply_fault, fault_mode

    cfg = resolve(None, {"faults.mode": "crash, nan", "faults.clients": "0, 3", "data.num_clients": 4})
    assert cfg.faults.mode == "crash,nan" and cfg.faults.clients == "0,3"
    assert [fault_mode(cfg, pid, 1) for pid in range(4)] == ["crash", "none", "none", "nan"]
    import torch

    w = {"w": torch.ones(2, 2)}
    assert torch.isnan(apply_fault(cfg, 3, 1, w, w)["w"]).all()


def test_resume_with_another_out_is_refused(tmp_path):
    from fedssl.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text(resolve().to_toml())
    assert main(["run", "--resume", str(run), "--out", str(tmp_path / "other")]) == 2
    assert not (tmp_path / "other").exists()


def test_subcommand_import_error_surfaces():
    code = ("import sys; sys.modules['fedssl.report.cli'] = None; from fedssl.cli import main; "
            "main(['report', '--help'])")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0 and "invalid choice" not in proc.stderr
    assert "ModuleNotFoundError: import of fedssl.report.cli" in proc.stderr, proc.stderr


def test_cli_keeps_logger_propagation(tmp_path):
    from fedssl.cli import main

    assert main(["config"]) == 0
    assert logging.getLogger("fedssl").propagate


def test_a_key_declared_with_a_check_rejects_in_one_line():
    from fedssl.config import check_key
    from fedssl.config.schema import Key

    k = Key("server.strategy", str, "x", "help", {**keys()["server.strategy"].meta, "choices": None,
                                                   "check": lambda v: None if ":" in v else f"{v!r} is no path"})
    assert check_key(k, "pkg.mod:Cls") == "pkg.mod:Cls"
    with pytest.raises(ConfigError, match=r"^server.strategy: 'nope' is no path$"):
        check_key(k, "nope")
