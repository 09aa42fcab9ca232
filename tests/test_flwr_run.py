"""``flwr run .`` in simulation: the Flower CLI submits this app (its pyproject's
``[tool.flwr.app]``) with ``--run-config`` to a simulation SuperLink started here on
free ports (not the CLI's shared local one), and the run leaves fedssl's files."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from fedssl.config import resolve
from fedssl.deploy import free_ports, run_config_string
from tests.conftest import ROOT, tiny

BIN = Path(sys.executable).parent


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_flwr_run_simulation_writes_fedssl_results(tmp_path):
    cfg = resolve(overrides=tiny(tmp_path / "run", **{"client.algorithm": "supervised"}))
    summary = flwr_run(tmp_path, cfg)
    assert summary["config"]["client"]["algorithm"] == "supervised"
    assert summary["final"]["clients"] == 4 and summary["final"]["rejected_updates"] == 0


def test_flwr_run_takes_a_users_algorithm_model_and_dataset(tmp_path):
    """The plug-ins of tests/test_plugins.py under stock Flower: the user algorithm's own
    key travels in client.own_keys and reaches every client's loss."""
    import pandas as pd

    from tests.test_plugins import PLUGIN, user_keys

    plugin = tmp_path / "myplug.py"
    plugin.write_text(PLUGIN)
    cfg = resolve(overrides=tiny(tmp_path / "run", **user_keys(plugin, **{"client.scaledce.scale": 2.5})))
    summary = flwr_run(tmp_path, cfg)
    assert summary["config"]["client"]["scaledce"] == {"scale": 2.5}
    assert summary["config"]["model"]["name"] == f"{plugin}:tiny_net"
    assert (pd.read_csv(tmp_path / "run" / "metrics.csv")["train_scale"] == 2.5).all()


def flwr_run(tmp_path: Path, cfg) -> dict:
    """``flwr run . sim --run-config <cfg>`` against a SimulationIo SuperLink started
    here; returns the run's summary.json (status ok, 2 rounds)."""
    home, link_home = tmp_path / "flwr-home", tmp_path / "link-home"
    home.mkdir()
    control = free_ports(1)[0]  # Flower 1.42 serves Control, Fleet and Runtime APIs on one HTTP port
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "sim"\n\n[superlink.sim]\naddress = "127.0.0.1:{control}"\ninsecure = true\n')
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
           "PYTHONPATH": str(ROOT), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = open(tmp_path / "superlink.log", "w")
    link = subprocess.Popen(
        [str(BIN / "flower-superlink"), "--simulation", "--insecure", "--disable-runtime-dependency-installation",
         "--host", "127.0.0.1", "--port", str(control), "--database", ":flwr-in-memory:"],
        stdout=log, stderr=subprocess.STDOUT, env={**env, "FLWR_HOME": str(link_home)}, cwd=tmp_path,
        start_new_session=True)
    try:
        deadline = time.time() + 180  # the SuperLink is ready when its Control API accepts
        while not _accepts(control) and time.time() < deadline and link.poll() is None:
            time.sleep(0.5)
        assert link.poll() is None and _accepts(control), (tmp_path / "superlink.log").read_text()[-3000:]
        proc = subprocess.run(
            [str(BIN / "flwr"), "run", ".", "sim", "--run-config", run_config_string(cfg),
             "--federation-config", "num_supernodes=4 client_resources_num_cpus=1", "--stream"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-4000:]
        summary_path = Path(cfg.run.out_dir) / "summary.json"
        for _ in range(60):  # --stream ends with the run; the file is written just before
            if summary_path.exists():
                break
            time.sleep(1)
        assert summary_path.exists(), out[-4000:] + (tmp_path / "superlink.log").read_text()[-3000:]
        summary = json.loads(summary_path.read_text())
        assert summary["status"] == "ok" and summary["rounds_completed"] == 2
        return summary
    finally:
        os.killpg(link.pid, signal.SIGTERM)  # the SuperLink this test started, and its children
        try:
            link.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(link.pid, signal.SIGKILL)
        log.close()
