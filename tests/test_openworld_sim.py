"""FedoSSL end to end: a real 2-round Flower simulation in which the clients'
centroid payloads reach the server and its global centroids come back."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from conftest import tiny
from fedssl.config import resolve
from fedssl.runlog import load_checkpoint
from fedssl.simulation import run_experiment


def test_fedossl_payload_round_trip(tmp_path):
    cfg = resolve(overrides=tiny(tmp_path, **{
        "data.partition": "openworld", "data.seen_classes": 6, "data.globally_unseen": 1,
        "data.num_clients": 3, "federation.rounds": 2, "client.local_steps": 3,
        "client.algorithm": "fedossl", "server.strategy": "fedossl",
        "client.fedossl.warmup_rounds": 1, "client.fedossl.pretrain_rounds": 0}))
    summary = run_experiment(cfg, quiet=True)
    assert summary["status"] == "ok" and summary["rounds_completed"] == 2

    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [r["round"] for r in rows] == ["1", "2"]
    assert all(r["clients"] == "3" for r in rows)
    # round 1: no centroids yet; round 2: every client trained against them
    assert rows[0]["train_loss_cluster"] == ""
    assert float(rows[1]["train_loss_cluster"]) > 0
    # N_k from round 1 persisted in the client state -> suppressed loss in round 2
    assert rows[0]["train_loss_sup"] == "" and float(rows[1]["train_loss_sup"]) > 0
    for r in rows:
        for col in ("acc_seen", "acc_unseen", "acc_local_unseen", "acc_global_unseen", "acc_unseen_strict",
                    *(f"absorbed_{k}" for k in range(6, 10))):
            assert 0.0 <= float(r[col]) <= 1.0
        assert float(r["discovered"]) in {0, 1, 2, 3, 4}

    # the server kept calibrated centroids from the clients' payloads (checkpointed)
    centroids = load_checkpoint(tmp_path)["strategy"]["inner"]["global_centroids"]
    assert centroids.shape == (10, 128) and np.isfinite(centroids).all()
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, atol=1e-5)

    per_class = summary["per_class_accuracy"]
    assert sorted(per_class, key=int) == [str(k) for k in range(10)]
    assert all(v is not None for v in per_class.values())
    assert summary["global_unseen_classes"] and summary["local_unseen_classes"]
    # the final model's confusion matrix, columns in the all-sample matching's order
    cm = np.asarray(summary["confusion_matrix"]["counts"])
    assert cm.shape == (10, 10) and cm.sum() == 400
    assert sorted(summary["confusion_matrix"]["output_of_class"]) == list(range(10))
    assert np.trace(cm) / cm.sum() == pytest.approx(float(rows[-1]["acc_all"]))


def test_fedossl_algorithm_with_another_strategy_warns_once_and_runs(tmp_path):
    from conftest import as_set_flags, run_cli

    over = tiny(tmp_path / "r", **{
        "data.partition": "openworld", "data.seen_classes": 6, "data.globally_unseen": 1,
        "data.num_clients": 3, "federation.rounds": 2, "client.local_steps": 2,
        "client.algorithm": "fedossl", "server.strategy": "fedavg", "client.fedossl.pretrain_rounds": 0})
    proc = run_cli("run", "--quiet", *as_set_flags(over))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert out.count("client.algorithm=fedossl is meant for server.strategy=fedossl") == 1, out[-3000:]
    assert (tmp_path / "r" / "summary.json").exists()


def test_fedossl_kill9_then_resume_equals_uninterrupted(tmp_path):
    """The persistent global centroids live in the strategy's checkpoint: a run killed
    after round 2 and resumed ends with the same metrics and the same centroids as one
    that never stopped (reference-style server clustering, the default)."""

    from conftest import kill9_after_checkpoint, run_cli
    from test_reliability import no_time, rows

    over = tiny(tmp_path / "killed", **{
        "data.partition": "openworld", "data.seen_classes": 6, "data.globally_unseen": 1,
        "data.num_clients": 3, "federation.rounds": 4, "client.local_steps": 20,
        "client.algorithm": "fedossl", "server.strategy": "fedossl", "client.fedossl.pretrain_rounds": 0,
        "server.fedossl_sgd_steps": 50, "run.checkpoint_every": 1})
    killed = tmp_path / "killed"
    kill9_after_checkpoint(over, killed)
    resumed = run_cli("run", "--resume", str(killed), "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run_experiment(resolve(overrides={**over, "run.out_dir": str(tmp_path / "straight")}), quiet=True)
    assert no_time(rows(killed)) == no_time(rows(tmp_path / "straight"))
    resumed_c = load_checkpoint(killed)["strategy"]["inner"]["global_centroids"]
    assert resumed_c is not None and resumed_c.shape[0] == 10
    np.testing.assert_array_equal(resumed_c,
                                  load_checkpoint(tmp_path / "straight")["strategy"]["inner"]["global_centroids"])
