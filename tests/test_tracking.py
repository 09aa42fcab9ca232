"""run.tracking: TensorBoard and MLflow receive every metric of every round, read back
with each library's own reader, against a real ``mlflow server`` process."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from fedssl.bench.grid import load_grid
from fedssl.config import ConfigError, resolve
from fedssl.deploy import free_ports
from fedssl.protocol import config_from_run_config
from tests.conftest import ROOT, TINY_GRID_BASE, as_set_flags, assert_bad_input, run_cli, tiny, wait_for

from mlflow import MlflowClient  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

TIMING = ("wall_s", "round_s")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """One real ``mlflow server`` per module (SQLite store, served artifacts) on a free port."""
    d = tmp_path_factory.mktemp("mlflow")
    port = free_ports(1)[0]
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{d}/mlflow.db", "--artifacts-destination",
                             str(d / "artifacts"), "--workers", "1"], cwd=d, stdout=open(d / "log", "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert proc.poll() is None, (d / "log").read_text()[-3000:]
        try:
            return urllib.request.urlopen(f"{uri}/health", timeout=2).status == 200
        except OSError:
            return False

    wait_for(healthy, 300, "mlflow server")
    yield uri, proc
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:  # uvicorn's workers can outlive a SIGTERM
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def csv_metrics(out: Path) -> dict[tuple[str, int], float]:
    """Every finite number of metrics.csv by (column, round)."""
    m = pd.read_csv(out / "metrics.csv")
    return {(c, int(r)): float(v) for c in m.columns if c not in ("round", "status")
            for r, v in zip(m["round"], pd.to_numeric(m[c], errors="coerce")) if math.isfinite(v)}


def test_one_run_feeds_tensorboard_and_mlflow_every_metric_of_every_round(tmp_path, mlflow_server):
    uri, _ = mlflow_server
    out = tmp_path / "run"
    proc = run_cli("run", "--quiet", *as_set_flags(tiny(out)), "--set", 'run.tracking=["tensorboard","mlflow"]',
                   env={"MLFLOW_TRACKING_URI": uri})
    assert proc.returncode == 0, proc.stderr[-3000:]
    want = csv_metrics(out)
    assert {r for _, r in want} == {1, 2} and len(want) > 20

    tb = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    tb.Reload()
    got_tb = {(tag, e.step): e.value for tag in tb.Tags()["scalars"] for e in tb.Scalars(tag)}
    assert set(got_tb) == set(want)
    for k, v in want.items():  # event files hold float32
        assert got_tb[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k

    client = MlflowClient(uri)
    run_id = json.loads((out / "tracking.json").read_text())["mlflow_run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["data.num_clients"] == "4" and run.data.params["run.tracking"] == "tensorboard,mlflow"
    got_ml = {(name, m.step): m.value for name in run.data.metrics for m in client.get_metric_history(run_id, name)}
    assert set(got_ml) == set(want)
    for k, v in want.items():  # metrics.csv rounds to 6 significant digits
        assert got_ml[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    assert {a.path for a in client.list_artifacts(run_id)} >= {"metrics.csv", "summary.json", "config.toml"}

    # fedssl.run from a plain Python process: the same metrics as `fedssl run`, same settings
    py_out = tmp_path / "py"
    code = (f"import fedssl; r = fedssl.run(**{tiny(py_out)!r}); "
            "r.metrics.to_csv(r.out_dir / 'api.csv', index=False); print(type(r.metrics).__name__)")
    api = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert api.returncode == 0 and api.stdout.strip() == "DataFrame", api.stderr[-3000:]
    a, b = pd.read_csv(out / "metrics.csv"), pd.read_csv(py_out / "api.csv")
    assert list(a.columns) == list(b.columns)
    pd.testing.assert_frame_equal(a.drop(columns=[c for c in a if c in TIMING or c.startswith("t_")]),
                                  b.drop(columns=[c for c in b if c in TIMING or c.startswith("t_")]))


def test_a_grid_is_one_mlflow_experiment_with_one_run_per_cell(tmp_path, mlflow_server, monkeypatch):
    """Through the Python API: fedssl.bench returns results.csv as a DataFrame."""
    import fedssl

    uri, _ = mlflow_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    grid = tmp_path / "grid.toml"
    grid.write_text('[base]\n"data.dataset" = "synthetic"\n"run.tracking" = ["mlflow"]\n' + TINY_GRID_BASE
                    + '\n[axes]\n"client.algorithm" = ["supervised", "fixmatch"]\n')
    table = fedssl.bench(grid, tmp_path / "bench")
    assert sorted(table["client.algorithm"]) == ["fixmatch", "supervised"] and (table["status"] == "ok").all()
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(f"fedssl bench {(tmp_path / 'bench').resolve()}")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.data.tags["client.algorithm"] for r in runs) == ["fixmatch", "supervised"]
    for r in runs:
        rounds = [m.step for m in client.get_metric_history(r.info.run_id, "acc_all")]
        assert r.info.status == "FINISHED" and rounds == [1, 2]


def test_unreachable_tracking_uri_at_start_is_a_one_line_error(tmp_path):
    port = free_ports(1)[0]  # nothing listens there
    proc = run_cli("run", *as_set_flags(tiny(tmp_path / "run", **{"run.tracking": "mlflow"})),
                   env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}, timeout=300)
    assert_bad_input(proc, "run.tracking=mlflow", f"127.0.0.1:{port}")
    assert not (tmp_path / "run" / "metrics.csv").exists()


@pytest.mark.parametrize("package", ["mlflow", "tensorboard"])
def test_a_tracker_that_is_not_installed_names_the_extra(tmp_path, package):
    shadow = tmp_path / "shadow" / package  # the package as an interpreter without it sees it
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(f"raise ModuleNotFoundError(\"No module named '{package}'\")\n")
    env = {"PYTHONPATH": os.pathsep.join([str(shadow.parent), str(ROOT)])}
    proc = run_cli("run", *as_set_flags(tiny(tmp_path / "run", **{"run.tracking": package})), env=env,
                   timeout=300)
    assert_bad_input(proc, f"the {package} package is not installed", "fedssl[tracking]")


def test_tracking_takes_a_list_in_toml_set_and_flowers_run_config(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('[run]\ntracking = ["mlflow", "tensorboard"]\n')
    assert resolve(str(toml)).run.tracking == "mlflow,tensorboard"
    assert resolve(None, {"run.tracking": '["tensorboard", "mlflow"]'}).run.tracking == "tensorboard,mlflow"
    assert resolve(None, {"run.tracking": "tensorboard, mlflow"}).run.tracking == "tensorboard,mlflow"
    assert resolve(None, {"run.tracking": "[]"}).run.tracking == ""
    flat = {k: v for k, v in resolve().to_flat().items()}
    assert config_from_run_config({**flat, "run.tracking": "tensorboard,mlflow"}).run.tracking == \
        "tensorboard,mlflow"
    grid = tmp_path / "grid.toml"
    grid.write_text('[base]\n"run.tracking" = ["mlflow"]\n[axes]\n"run.seed" = [0, 1]\n')
    assert {c.cfg.run.tracking for c in load_grid(grid, tmp_path / "bench").cells} == {"mlflow"}
    with pytest.raises(ConfigError, match="unknown value 'wandb'"):
        resolve(None, {"run.tracking": '["wandb"]'})
    with pytest.raises(ConfigError, match="expected a list of strings"):
        resolve(None, {"run.tracking": "[1]"})


def test_a_tracking_server_lost_mid_run_costs_no_data(tmp_path, mlflow_server):
    """Last in this module: it kills the module's server."""
    uri, server = mlflow_server
    out = tmp_path / "run"
    flags = as_set_flags(tiny(out, **{"federation.rounds": 6, "client.local_steps": 20, "run.tracking": "mlflow"}))
    proc = subprocess.Popen([sys.executable, "-m", "fedssl.cli", "run", "--quiet", *flags], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "MLFLOW_TRACKING_URI": uri})
    try:
        client = MlflowClient(uri)
        run_id = wait_for(lambda: json.loads((out / "tracking.json").read_text())["mlflow_run_id"]
                          if (out / "tracking.json").exists() else None, 600, "the MLflow run")
        wait_for(lambda: client.get_metric_history(run_id, "acc_all"), 600, "round 1 in MLflow")
        assert not (out / "summary.json").exists(), "too late: the run already finished"
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(30)
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert "run.tracking: mlflow failed" in err
    m = pd.read_csv(out / "metrics.csv")
    assert list(m["round"]) == [1, 2, 3, 4, 5, 6] and m["acc_all"].notna().all()
    assert json.loads((out / "summary.json").read_text())["status"] == "ok"
