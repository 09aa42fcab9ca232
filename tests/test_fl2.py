"""(FL)^2: adaptive thresholds, the sharpness-aware consistency term and the
learning-status-aware weights against hand computations; a real Flower simulation;
its per-client learning status survives kill -9 + --resume."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from torch import nn

from fedssl import strategies
from fedssl import runlog
from fedssl.algorithms import Batch, RoundContext
from fedssl.algorithms.fl2 import class_thresholds, learning_status
from fedssl.config import resolve
from fedssl.training import ClientData, build_algorithm, train_client
from fedssl.flower_compat import server_reply
from tests.conftest import kill9_after_checkpoint, run_cli, spy_unlabeled_batches, tiny, unlabeled_only

PROBS = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.6, 0.3, 0.1]], dtype=torch.float64)


def fl2(**params: object):
    return build_algorithm(resolve(overrides={"client.algorithm": "fl2",
                                              **{f"client.fl2.{k}": v for k, v in params.items()}}))


# -- client-specific adaptive thresholds ---------------------------------------------
def test_thresholds_by_hand():
    """tau_g = mean max p = (0.7 + 0.8 + 0.4 + 0.6) / 4; p~ = column means
    (0.425, 0.4, 0.175); tau(k) = tau_g * p~(k) / 0.425. Sample 3 (class 0 at 0.6 <
    0.625) is the only one left out."""
    status, class_conf = learning_status(PROBS)
    assert status.item() == pytest.approx(0.625)
    assert class_conf.numpy() == pytest.approx([0.425, 0.4, 0.175])
    tau = class_thresholds(status, class_conf)
    assert tau.numpy() == pytest.approx([0.625, 0.625 * 0.4 / 0.425, 0.625 * 0.175 / 0.425])
    conf, y = PROBS.max(dim=1)
    assert (conf >= tau[y]).tolist() == [True, True, True, False]


@pytest.mark.parametrize("m", [0.0, 0.5])
def test_begin_round_estimates_the_status_saves_it_and_blends_a_saved_one(monkeypatch, m):
    """m = 0 (the reference): the status is this round's alone; m > 0 blends in the
    status saved in the client's state. Either way the new status is saved."""
    import fedssl.algorithms.fl2 as fl2_mod

    monkeypatch.setattr(fl2_mod.semifl, "global_pseudo_probs", lambda *a: PROBS)
    alg = fl2(status_momentum=m)
    ctx = RoundContext(3, state={"status": torch.tensor(0.9, dtype=torch.float64),
                                 "class_confidence": torch.tensor([0.2, 0.2, 0.6], dtype=torch.float64)})
    alg.begin_round(nn.Linear(1, 1), ctx, ClientData(*[torch.zeros(0)] * 4))
    status = m * 0.9 + (1 - m) * 0.625
    class_conf = m * np.array([0.2, 0.2, 0.6]) + (1 - m) * np.array([0.425, 0.4, 0.175])
    assert ctx.state["status"].item() == pytest.approx(status)
    assert ctx.state["class_confidence"].numpy() == pytest.approx(class_conf)
    assert alg._tau.numpy() == pytest.approx(status * class_conf / class_conf.max())
    assert alg._status == pytest.approx(status)


# -- sharpness-aware consistency regularisation --------------------------------------
def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("sam", ["asam", "sam"])
def test_sacr_step_gradient_and_loss_by_hand(sam):
    """A linear model f(x) = W x + b on a batch of 4 with fixed round predictions:
    samples 0-2 are selected by their class thresholds, 0 and 1 are also confident
    (>= 0.95). The gradient the trainer applies is lambda_u x grad CE(selected) plus
    grad KL(selected-confident) at w + eps, eps the (A)SAM ascent step of CE(confident);
    the weights come back bit for bit."""
    rho, eta, temp, lam = 0.3, 0.01, 2.0, 0.7
    alg = fl2(rho=rho, eta=eta, temperature=temp, lambda_u=lam, sam=sam)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).double()
    before = [p.detach().clone() for p in model.parameters()]
    alg._probs = torch.tensor([[0.97, 0.02, 0.01], [0.01, 0.98, 0.01], [0.3, 0.2, 0.5], [0.4, 0.35, 0.25]],
                              dtype=torch.float64)
    alg._tau, alg._status = torch.tensor([0.5, 0.5, 0.45], dtype=torch.float64), 0.6
    x = torch.randn(4, 1, 2, 2, dtype=torch.float64)
    batch = Batch(x_l=[x[:0]], y_l=torch.zeros(0, dtype=torch.long), x_u=[x], idx_u=torch.arange(4))
    loss, metrics = alg.loss(model, batch, RoundContext(1))
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b)  # the perturbation is undone exactly
    loss.backward()

    W, b = before[0].numpy(), before[1].numpy()
    X = x.reshape(4, -1).numpy()
    sel, y = X[:3], np.array([0, 1, 2])  # sample 3: 0.4 < tau(0) = 0.5
    conf = np.array([1.0, 1.0, 0.0])  # 0.97, 0.98 >= 0.95; 0.5 is not
    onehot = np.eye(3)[y]
    z = sel @ W.T + b
    ce = float(np.mean(-np.log(softmax(z)[np.arange(3), y])))
    g_z = (softmax(z) - onehot) / 3  # grad of the mean CE over the selected
    g_ce_W, g_ce_b = g_z.T @ sel, g_z.sum(0)
    # the ascent direction: CE over the confident samples only (mean over 2)
    g_c = (softmax(z[:2]) - onehot[:2]) / 2
    gW, gb = g_c.T @ sel[:2], g_c.sum(0)
    t = np.abs(W) + eta if sam == "asam" else np.ones_like(W)
    norm = np.sqrt(((gW * t) ** 2).sum() + (gb ** 2).sum())
    eps_W, eps_b = rho * gW * t * t / (norm + 1e-12), rho * gb / (norm + 1e-12)
    z_hat = sel @ (W + eps_W).T + (b + eps_b)
    q, s = softmax(z), softmax(z_hat / temp)
    kl = float((conf * (q * (np.log(q) - np.log(s))).sum(1)).sum() / 3)
    g_kl_z = conf[:, None] * (s - q) / temp / 3
    want_W = lam * g_ce_W + g_kl_z.T @ sel
    want_b = lam * g_ce_b + g_kl_z.sum(0)
    assert loss.item() == pytest.approx(lam * ce + kl, rel=1e-9)
    assert metrics["loss_sacr"].item() == pytest.approx(kl, rel=1e-9) and kl > 0
    np.testing.assert_allclose(model[1].weight.grad.numpy(), want_W, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(model[1].bias.grad.numpy(), want_b, rtol=1e-8, atol=1e-12)
    assert metrics["mask"].item() == pytest.approx(3 / 4) and metrics["mask_sacr"].item() == pytest.approx(2 / 4)
    assert metrics["status_weight"] == pytest.approx(0.4)


def test_no_selected_sample_gives_a_zero_loss_and_no_gradient():
    alg = fl2()
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).double()
    alg._probs = torch.full((2, 3), 1 / 3, dtype=torch.float64)
    alg._tau, alg._status = torch.full((3,), 0.9, dtype=torch.float64), 1 / 3
    x = torch.randn(2, 1, 2, 2, dtype=torch.float64)
    loss, metrics = alg.loss(model, Batch(x_l=[x[:0]], y_l=torch.zeros(0, dtype=torch.long), x_u=[x],
                                          idx_u=torch.arange(2)), RoundContext(1))
    loss.backward()
    assert loss.item() == 0.0 and metrics["mask"].item() == 0.0
    assert all(not p.grad.any() for p in model.parameters())


# -- learning-status-aware aggregation -----------------------------------------------
@pytest.fixture
def server_identity():
    """Messages read the ServerApp's run identity; give them one outside a run."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1


GLOBAL = {"w": np.array([[1.0, -2.0], [0.5, 0.0]], dtype=np.float32), "b": np.array([0.25, -1.0], dtype=np.float32)}


def reply(pid: int, arrays: dict[str, np.ndarray], weight: float) -> Message:
    metrics = MetricRecord({"num-examples": 1, "partition-id": pid, "train_status_weight": weight})
    content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}), "metrics": metrics})
    return server_reply(content, 11 + pid, 1)


class Grid:
    def get_node_ids(self) -> list[int]:
        return [11, 12, 13]


@pytest.mark.parametrize("strategy", ["fedavg", "fedavgm"])
def test_status_weights_by_hand_and_a_weightless_update_is_rejected(server_identity, strategy, caplog):
    """Clients at status 0.8, 0.4 and 0.9 weigh 0.2 : 0.6 : 0.1 (divided by 0.9);
    under FedAvgM (momentum 0.5, server lr 1, first round) the step is that mean.
    An update whose weight is 0 is left out with a one-line reason."""
    cfg = resolve(overrides={"client.algorithm": "fl2", "server.strategy": strategy, "server.server_lr": 1.0,
                             "server.server_momentum": 0.5})
    s = strategies.build_strategy(cfg)
    s.deployment = False
    assert s.inner.weighted_by_key == "train_status_weight"
    rng = np.random.default_rng(0)
    clients = [{k: (v + rng.normal(size=v.shape)).astype(np.float32) for k, v in GLOBAL.items()} for _ in range(4)]
    weights = [0.2, 0.6, 0.1]
    s.configure_train(1, ArrayRecord({k: Array(v) for k, v in GLOBAL.items()}), ConfigRecord(), Grid())
    with caplog.at_level("WARNING", logger="fedssl"):
        out, _ = s.aggregate_train(1, [reply(i, c, w) for i, (c, w) in enumerate(zip(clients, weights + [0.0]))])
    for k in GLOBAL:
        want = sum(w * c[k].astype(np.float64) for w, c in zip(weights, clients)) / sum(weights)
        np.testing.assert_allclose(out[k].numpy(), want, rtol=1e-5, atol=1e-6)
    assert s.last_round["rejected_updates"] == 1
    assert "client 3: update rejected: aggregation weight train_status_weight must be a finite number > 0, got 0.0" \
        in " ".join(r.getMessage() for r in caplog.records)
    other = strategies.build_strategy(resolve(overrides={"client.algorithm": "fixmatch"}))
    assert other.inner.weighted_by_key == "num-examples"


# -- a real Flower simulation, and exact resume --------------------------------------
def las(out: Path, **extra) -> dict:
    return tiny(out, **{"data.server_labels_per_class": 10, "data.labeled_ratio": 0.0,
                        "client.algorithm": "fl2", "client.local_steps": 4, "client.batch_size": 16,
                        "client.uratio": 2, "client.fl2.sacr_threshold": 0.3,
                        "server.strategy": "fedavgm", "server.server_momentum": 0.5,
                        "server.warmup_steps": 30, "server.train_steps": 10, **extra})


def rows(out: Path) -> list[dict[str, str]]:
    with open(out / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_fl2_runs_two_rounds_in_a_flower_simulation(tmp_path):
    from fedssl.simulation import run_experiment

    res = run_experiment(resolve(overrides=las(tmp_path, **{"run.checkpoint_every": 1})), quiet=True)
    assert res["status"] == "ok" and res["final"]["round"] == 2
    got = rows(tmp_path)
    assert [r["clients"] for r in got] == ["4", "4"]
    for r in got:
        status, weight = float(r["train_status"]), float(r["train_status_weight"])
        assert 0 < status < 1 and weight == pytest.approx(1 - status)
        assert float(r["train_mask"]) > 0 and float(r["acc_all"]) > 0.1
        assert float(r["train_mask_sacr"]) > 0 and float(r["train_loss_sacr"]) > 0  # the SAM term ran


def test_kill9_then_resume_keeps_the_client_status_exact(tmp_path):
    """With status_momentum > 0 each client's next thresholds depend on its saved
    status; kill -9 + --resume gives the uninterrupted run's rows."""
    from fedssl.simulation import run_experiment

    killed = tmp_path / "killed"
    over = las(killed, **{"federation.rounds": 4, "run.checkpoint_every": 1, "data.num_clients": 3,
                          "federation.fraction_train": 0.67, "client.fl2.status_momentum": 0.5})
    kill9_after_checkpoint(over, killed)
    saved = list((killed / "client_state").rglob("*"))
    assert saved, "no client state saved"
    resumed = run_cli("run", "--resume", str(killed), "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run_experiment(resolve(overrides={**over, "run.out_dir": str(tmp_path / "straight")}), quiet=True)
    timeless = lambda rs: [{k: v for k, v in r.items()  # noqa: E731
                            if not k.startswith(("wall_s", "round_s", "t_"))} for r in rs]
    got, want = rows(killed), rows(tmp_path / "straight")
    assert [r["round"] for r in got] == ["1", "2", "3", "4"]
    assert timeless(got) == timeless(want)
    assert runlog.load_checkpoint(killed)["round"] == 4


def test_a_cnn_client_round_runs_the_consistency_term_and_saves_its_status():
    """Through the shared trainer on the CNN (whose backward needs the weights the
    perturbed forward must not modify), with a low SACR threshold so the term runs."""
    cfg = resolve(overrides={"client.algorithm": "fl2", "client.local_steps": 2, "client.batch_size": 4,
                             "client.fl2.sacr_threshold": 0.01})
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (12, 1, 28, 28), dtype=torch.uint8, generator=g)
    data = ClientData(x[:0], torch.zeros(0, dtype=torch.long), x, torch.randint(0, 10, (12,), generator=g),
                      flip=False)
    from fedssl.models import build_model

    model = build_model("cnn", 10)
    res = train_client(model, build_algorithm(cfg), data, cfg, server_round=1, partition_id=0, state=None)
    assert set(res.state) == {"algo.status", "algo.class_confidence"}
    assert res.metrics["train_mask_sacr"] > 0 and 0 < res.metrics["train_loss_sacr"] < float("inf")
    assert res.metrics["train_status_weight"] == pytest.approx(1 - res.state["algo.status"].item())


def test_fl2_iterates_epochs_over_its_selected_samples_with_the_references_clip(monkeypatch):
    """The reference's client round (global_pseudo_lb = 2): local_epochs passes, in
    unlabeled batches, over the samples above their class's threshold only, gradients
    clipped at norm 1."""
    import math

    import fedssl.algorithms.fl2 as fl2_mod
    from fedssl.models import build_model

    data = unlabeled_only(12)
    probs = torch.full((12, 10), 0.05)
    probs[:, 0] = 0.55
    chosen = torch.tensor([2, 3, 7, 11])
    probs[chosen, 0], probs[chosen, 1] = 0.95, 0.0  # tau_g = tau(0) = (8 x 0.55 + 4 x 0.95) / 12 = 0.683: only these pass
    monkeypatch.setattr(fl2_mod.semifl, "global_pseudo_probs", lambda *a: probs.clone())
    drawn = spy_unlabeled_batches(monkeypatch, fl2_mod.FL2)
    cfg = resolve(overrides={"client.algorithm": "fl2", "client.local_epochs": 2, "client.batch_size": 3})
    assert (cfg.client.uratio, cfg.client.lr, cfg.client.max_grad_norm) == (1, 0.03, 1.0)  # the reference's
    res = train_client(build_model("cnn", 10), build_algorithm(cfg), data, cfg, server_round=1, partition_id=0,
                       state=None)
    assert len(drawn) == 2 * math.ceil(len(chosen) / 3)
    assert set(torch.cat(drawn).tolist()) == set(chosen.tolist())
    assert res.metrics["train_mask"] == 1.0 and res.metrics["train_selected"] == pytest.approx(4 / 12)
