"""Labels at server (issue 11): the server's labeled set, server-side training,
clients without labels, SemiFL and FedSTO."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from fedssl import runlog
from fedssl.algorithms import Batch, RoundContext
from fedssl.algorithms.fedsto import srip
from fedssl.algorithms.semifl import local_log_prior, semifl_loss
from fedssl.config import ConfigError, DataConfig, resolve
from fedssl.data import make_partition
from fedssl.models import build_model
from fedssl.server_training import ServerTrainer, recompute_bn_stats
from fedssl.training import ClientData, build_algorithm, train_client
from tests.conftest import assert_bad_input, kill9_after_checkpoint, run_cli, spy_unlabeled_batches, tiny, unlabeled_only

K = 10


def labels_from_counts(counts, seed=0) -> np.ndarray:
    y = np.repeat(np.arange(len(counts)), counts).astype(np.int64)
    return np.random.default_rng(seed).permutation(y)


# -- partition ----------------------------------------------------------------------
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(counts=st.lists(st.integers(8, 60), min_size=K, max_size=K),
       per_class=st.integers(1, 8), clients=st.integers(1, 12),
       scheme=st.sampled_from(["iid", "dirichlet", "pathological"]),
       ratio=st.sampled_from([0.0, 0.2]), seed=st.integers(0, 2**16))
def test_server_labels_are_exact_disjoint_and_off_every_client(counts, per_class, clients, scheme,
                                                               ratio, seed):
    labels = labels_from_counts(counts, seed)
    cfg = DataConfig(partition=scheme, num_clients=clients, alpha=0.3, classes_per_client=2,
                     labeled_ratio=ratio, server_labels_per_class=per_class)
    part = make_partition(labels, cfg, K, seed)
    server = part.server
    assert np.array_equal(np.bincount(labels[server], minlength=K), np.full(K, per_class))
    assert np.all(np.diff(server) > 0)
    on_clients = np.concatenate([np.concatenate([s.labeled, s.unlabeled]) for s in part.shards])
    assert not np.intersect1d(on_clients, server).size, "a server sample is on a client"
    assert len(np.unique(on_clients)) == len(on_clients), "clients overlap"
    assert np.array_equal(np.sort(np.concatenate([on_clients, server])), np.arange(len(labels)))
    if ratio == 0:
        assert all(len(s.labeled) == 0 for s in part.shards), "clients must hold no labels"
    else:
        assert sum(len(s.labeled) for s in part.shards) > 0, "mixed case: clients keep labels"
    assert make_partition(labels, cfg, K, seed) == part, "reproducible"


def test_server_draw_depends_on_the_seed_and_not_on_the_partitioner():
    labels = labels_from_counts([50] * K)
    a = make_partition(labels, DataConfig(partition="iid", num_clients=5, labeled_ratio=0.0,
                                          server_labels_per_class=3), K, 0)
    b = make_partition(labels, DataConfig(partition="dirichlet", num_clients=5, labeled_ratio=0.0,
                                          server_labels_per_class=3), K, 0)
    c = make_partition(labels, DataConfig(partition="iid", num_clients=5, labeled_ratio=0.0,
                                          server_labels_per_class=3), K, 1)
    assert np.array_equal(a.server, b.server) and not np.array_equal(a.server, c.server)


def test_server_labels_larger_than_smallest_class_is_a_config_error():
    labels = labels_from_counts([30] * 9 + [4])
    with pytest.raises(ConfigError, match="server_labels_per_class=5 is larger than the smallest class"):
        make_partition(labels, DataConfig(labeled_ratio=0.0, server_labels_per_class=5), K, 0)


@pytest.mark.parametrize("flags, needle", [
    (["data.server_labels_per_class=-1"], "data.server_labels_per_class"),
    (["data.server_labels_per_class=7000", "data.labeled_ratio=0"], "larger than the smallest class"),
    (["data.server_labels_per_class=5", "data.partition='openworld'", "data.seen_classes=6"],
     "openworld"),
    (["data.labeled_ratio=0"], "data.labeled_ratio"),
    (["server.train_lr=0"], "server.train_lr"),
    (["server.bn_stats='server_clients'", "model.name='cnn_bn'"], "server.bn_stats"),
    (["data.server_labels_per_class=10", "data.labeled_ratio=0", "server.bn_stats='server_clients'"],
     "needs a model with batch norm"),
    (["server.bn_stats='clients'"], "server.bn_stats"),
])
def test_bad_server_label_settings_exit_2_with_one_line(tmp_path, fmnist, flags, needle):
    proc = run_cli("run", "--out", str(tmp_path / "o"), *sum((["--set", f] for f in flags), []))
    assert_bad_input(proc, needle)
    assert not (tmp_path / "o").exists()


# -- losses against hand computations -------------------------------------------------
def np_ce(z, y) -> float:
    z = np.asarray(z, dtype=np.float64)
    return float(np.log(np.exp(z - z.max()).sum()) + z.max() - z[y])


def test_semifl_loss_terms_by_hand():
    strong = torch.tensor([[2.0, 0.0, 1.0], [0.0, 3.0, 0.0]], dtype=torch.float64)
    mix = torch.tensor([[1.0, 1.0, 0.0], [0.5, 0.0, 2.0]], dtype=torch.float64)
    y_hat, y_p, lam = torch.tensor([0, 1]), torch.tensor([2, 0]), 0.3
    fix, mx = semifl_loss(strong, mix, y_hat, y_p, lam)
    want_fix = (np_ce([2, 0, 1], 0) + np_ce([0, 3, 0], 1)) / 2
    want_mix = (lam * (np_ce([1, 1, 0], 0) + np_ce([0.5, 0, 2], 1)) / 2
                + (1 - lam) * (np_ce([1, 1, 0], 2) + np_ce([0.5, 0, 2], 0)) / 2)
    assert fix.item() == pytest.approx(want_fix) and mx.item() == pytest.approx(want_mix)
    empty = semifl_loss(strong[:0], mix[:0], y_hat[:0], y_p[:0], lam)
    assert empty[0].item() == 0.0 and empty[1].item() == 0.0


@pytest.mark.parametrize("tau,partners", [(0.0, "all"), (1.0, "all"), (0.0, "confident")])
def test_semifl_client_loss_on_a_constructed_batch(monkeypatch, tau, partners):
    """Fixed global pseudo-labels, threshold, Beta-mixed weak views with partners from
    all local samples (or, mix_partners = confident, the confident ones) and their argmax
    labels; a linear model so the math is explicit.
    tau > 0: both terms see the logits plus tau x log(local pseudo-label prior)."""
    import fedssl.algorithms.semifl as semifl_mod

    monkeypatch.setattr(semifl_mod.augment, "weak", lambda x, flip=True: x)  # identity weak view
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).double()
    x_u = torch.randint(0, 256, (5, 1, 2, 2), dtype=torch.uint8)
    probs = torch.tensor([[0.97, 0.02, 0.01], [0.5, 0.3, 0.2], [0.01, 0.98, 0.01],
                          [0.1, 0.1, 0.8], [0.2, 0.2, 0.6]], dtype=torch.float64)
    alg = build_algorithm(resolve(overrides={"client.algorithm": "semifl", "client.semifl.threshold": 0.95,
                                             "client.semifl.lambda_u": 1.0, "client.semifl.logit_adjustment": tau,
                                             "client.semifl.mix_partners": partners}))
    alg._x_u, alg._flip, alg._probs = x_u, False, probs
    alg._confident = torch.tensor([0, 2])  # the round's pool: samples above tau
    # confident pseudo-labels 0 and 2 -> classes 0 and 1; one pseudo-count per class
    prior = np.log(np.array([2.0, 2.0, 1.0]) / 5.0)
    assert np.allclose(local_log_prior(probs, 0.95).numpy(), prior)
    alg._log_prior = tau * local_log_prior(probs, 0.95) if tau else 0.0
    strong = torch.randn(3, 1, 2, 2, dtype=torch.float64)
    batch = Batch(x_l=[torch.zeros(0, 1, 2, 2, dtype=torch.float64)], y_l=torch.zeros(0, dtype=torch.long),
                  x_u=[strong], idx_u=torch.tensor([0, 1, 2]))
    torch.manual_seed(7)
    loss, metrics = alg.loss(model, batch, RoundContext(1))
    torch.manual_seed(7)  # replay the draws: partners for the 2 confident samples, then lambda
    partner = torch.randint(0, 5, (2,)) if partners == "all" else torch.tensor([0, 2])[torch.randint(0, 2, (2,))]
    lam = float(torch.distributions.Beta(0.75, 0.75).sample())
    norm = lambda x: x.double() / 127.5 - 1.0  # noqa: E731
    w, b = model[1].weight.detach().numpy(), model[1].bias.detach().numpy()
    f = lambda x: x.reshape(len(x), -1).numpy() @ w.T + b + tau * prior  # noqa: E731
    conf = [0, 2]  # samples 0 and 2 pass tau = 0.95; labels 0 and 1
    zs = f(strong[conf])
    zm = f(lam * norm(x_u[conf]) + (1 - lam) * norm(x_u[partner]))
    y_p = probs[partner].argmax(1).numpy()
    want_fix = (np_ce(zs[0], 0) + np_ce(zs[1], 1)) / 2
    want_mix = (lam * (np_ce(zm[0], 0) + np_ce(zm[1], 1)) / 2
                + (1 - lam) * (np_ce(zm[0], y_p[0]) + np_ce(zm[1], y_p[1])) / 2)
    assert loss.item() == pytest.approx(want_fix + want_mix, rel=1e-6)  # views are float32
    assert metrics["mask"] == pytest.approx(2 / 3) and metrics["mix_lambda"] == pytest.approx(lam)


def test_semifl_ema_teacher_labels_the_round_and_persists(monkeypatch):
    """client.semifl.teacher = "ema": the round's fixed pseudo-labels come from the
    client's persistent EMA teacher, not from the received model (the default)."""
    import fedssl.algorithms.semifl as semifl_mod

    monkeypatch.setattr(semifl_mod.augment, "weak", lambda x, flip=True: x)
    data = unlabeled_only()
    torch.manual_seed(0)
    model, teacher = build_model("cnn", 10), build_model("cnn", 10)
    paper = build_algorithm(resolve(overrides={"client.algorithm": "semifl"}))
    ema = build_algorithm(resolve(overrides={"client.algorithm": "semifl", "client.semifl.teacher": "ema"}))
    assert not paper.uses_teacher and ema.uses_teacher
    ctx = RoundContext(1, teacher=teacher)
    paper.begin_round(model, ctx, data)
    ema.begin_round(model, ctx, data)
    cpu = torch.device("cpu")
    assert torch.equal(paper._probs, semifl_mod.global_pseudo_probs(model, data.x_u, False, cpu))
    assert torch.equal(ema._probs, semifl_mod.global_pseudo_probs(teacher, data.x_u, False, cpu))
    assert not torch.allclose(ema._probs, paper._probs)
    adjusted = build_algorithm(resolve(overrides={"client.algorithm": "semifl", "client.semifl.logit_adjustment": 0.5}))
    adjusted.begin_round(model, ctx, data)  # the round's prior comes from its fixed pseudo-labels
    assert paper._log_prior == 0.0
    assert torch.equal(adjusted._log_prior, 0.5 * local_log_prior(paper._probs, 0.95))
    cfg = resolve(overrides={"client.algorithm": "semifl", "client.semifl.teacher": "ema",
                             "client.local_steps": 2, "client.batch_size": 4, "client.semifl.threshold": 0.05})
    res = train_client(model, build_algorithm(cfg), data, cfg, server_round=1, partition_id=0, state=None)
    assert any(k.startswith("teacher.") for k in res.state)  # kept for the client's next round


@pytest.mark.parametrize("freeze", [False, True])
def test_semifl_freeze_head_trains_the_body_only(freeze):
    """client.semifl.freeze_head: a client round leaves the received head as it is and
    moves the body; off (SemiFL's code), both move. The model is handed back trainable."""
    data = unlabeled_only()
    torch.manual_seed(0)
    model = build_model("cnn", 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = resolve(overrides={"client.algorithm": "semifl", "client.semifl.freeze_head": freeze,
                             "client.local_steps": 2, "client.batch_size": 4, "client.semifl.threshold": 0.05})
    train_client(model, build_algorithm(cfg), data, cfg, server_round=1, partition_id=0, state=None)
    after = model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert {k for k in moved if not k.startswith("head.")}  # the body trained either way
    assert bool(moved & {"head.weight", "head.bias"}) is not freeze
    assert all(p.requires_grad for p in model.parameters())


def test_srip_of_scaled_orthonormal_rows_is_exact():
    q, _ = torch.linalg.qr(torch.randn(8, 3, dtype=torch.float64))
    w = math.sqrt(1.5) * q.t()  # rows orthonormal x sqrt(1.5): W W^T - I = 0.5 I
    assert srip(w).item() == pytest.approx(0.5)
    assert srip(q.t()).item() == pytest.approx(0.0, abs=1e-9)


class Tiny(nn.Module):
    """features = table[id]; logits = head(features)."""

    def __init__(self, feats, head_w) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.tensor(feats, dtype=torch.float64))
        self.head = nn.Linear(len(feats[0]), len(head_w), bias=False).double()
        with torch.no_grad():
            self.head.weight.copy_(torch.as_tensor(head_w, dtype=torch.float64))

    def forward(self, x):
        return self.head(self.table[x[:, 0].long()])


def test_fedsto_phases_loss_and_frozen_head():
    q, _ = torch.linalg.qr(torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    head_w = (math.sqrt(1.2) * q.t()).numpy()  # SRIP = 0.2 exactly
    feats = [[1.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.0], [0.0, 0.0, 0.0, 1.0]]
    teacher = Tiny(feats, head_w)
    student = Tiny(feats, head_w)
    cfg = resolve(overrides={"client.algorithm": "fedsto", "federation.rounds": 10,
                             "client.fedsto.selective_fraction": 0.5, "client.fedsto.threshold": 0.5,
                             "client.fedsto.ortho_lambda": 0.1})
    alg = build_algorithm(cfg)
    ids = lambda *i: torch.tensor(i, dtype=torch.float64)[:, None]  # noqa: E731
    batch = Batch(x_l=[ids()[:0]], y_l=torch.zeros(0, dtype=torch.long), x_u=[ids(0, 1, 2), ids(3, 2, 1)])
    z = (np.array(feats) @ head_w.T)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    keep = p[:3].max(1) >= 0.5
    want_u = sum(np_ce(z[[3, 2, 1][i]], p[i].argmax()) for i in range(3) if keep[i]) / 3
    for rnd, reg in ((5, 0.0), (6, 0.1 * 0.2)):  # phase 1 ends at ceil(0.5 * 10) = 5
        ctx = RoundContext(rnd, teacher=teacher)
        alg.begin_round(student, ctx, None)
        assert student.head.weight.requires_grad == (rnd > 5)
        loss, _ = alg.loss(student, batch, ctx)
        assert loss.item() == pytest.approx(want_u + reg)
        alg.end_round(student, ctx, None)
        assert student.head.weight.requires_grad
    assert alg.server_penalty(student, 3) is None and alg.server_penalty(student, 7).item() == pytest.approx(0.02)


def test_fedsto_srip_code_form_layers_and_decay():
    """SRIP's code form (sigma squared, stepped weight over phase 2) and the all-layer
    penalty, against hand computations on weights with known sigma_max."""
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(4, 3, dtype=torch.float64))
    head_w = (math.sqrt(1.2) * q.t()).numpy()  # sigma_max(W W^T - I) = 0.2
    student = Tiny([[1.0, 0.0, 0.0, 0.0]], head_w)
    with torch.no_grad():  # the table (1 x 4, rows first): W W^T - I = 1.5^2 - 1 = 1.25
        student.table.copy_(torch.tensor([[1.5, 0.0, 0.0, 0.0]], dtype=torch.float64))
    base = {"client.algorithm": "fedsto", "federation.rounds": 40, "client.fedsto.selective_fraction": 0.5,
            "client.fedsto.ortho_lambda": 0.1}
    sq = build_algorithm(resolve(overrides={**base, "client.fedsto.srip_form": "sigma_sq"}))
    assert sq.penalty(student, 21).item() == pytest.approx(0.1 * 0.2 ** 2)
    every = build_algorithm(resolve(overrides={**base, "client.fedsto.ortho_layers": "all"}))
    assert every.penalty(student, 21).item() == pytest.approx(0.1 * (0.2 + 1.25))
    decay = build_algorithm(resolve(overrides={**base, "client.fedsto.ortho_decay": "srip"}))
    # phase 2 = rounds 21..40 (20 rounds): full weight through 10 % (rounds 21-22), then
    # x1e-3 through 25 % (round 25), x1e-4 through 35 % (27), x1e-6 through 60 % (32), then 0
    want = {21: 0.1, 22: 0.1, 23: 1e-4, 25: 1e-4, 26: 1e-5, 27: 1e-5, 28: 1e-7, 32: 1e-7, 33: 0.0, 40: 0.0}
    assert {r: decay.ortho_weight(r) for r in want} == pytest.approx(want)
    assert decay.penalty(student, 33) is None and decay.penalty(student, 20) is None  # phase 1: none
    assert decay.penalty(student, 25).item() == pytest.approx(1e-4 * 0.2)


def test_fedsto_teacher_restarts_from_the_global_model_by_default():
    assert resolve(overrides={"client.algorithm": "fedsto"}).client.teacher_sync == 0.0
    assert resolve(overrides={"client.algorithm": "fixmatch"}).client.teacher_sync == 0.5


def test_a_restarting_teacher_is_not_stored_and_a_stored_one_changes_nothing():
    """teacher_sync = 0: the next round's teacher is the received model, so the client
    stores no teacher; a teacher stored by an earlier setting is then ignored bit for bit."""
    base = {"client.algorithm": "fedsto", "client.local_steps": 2, "client.batch_size": 4,
            "client.uratio": 2, "federation.rounds": 4, "client.fedsto.threshold": 0.05}

    def round_(sync: float, rnd: int, state, init: dict[str, torch.Tensor]):
        cfg = resolve(overrides={**base, "client.teacher_sync": sync})
        model = build_model("cnn", 10)
        model.load_state_dict(init)
        res = train_client(model, build_algorithm(cfg), unlabeled_only(), cfg, server_round=rnd,
                           partition_id=0, state=state)
        return res, model.state_dict()

    torch.manual_seed(0)
    init = build_model("cnn", 10).state_dict()
    kept, after1 = round_(0.5, 3, None, init)
    assert any(k.startswith("teacher.") for k in kept.state)
    restarted, _ = round_(0.0, 3, None, init)
    assert not any(k.startswith("teacher.") for k in restarted.state)
    # round 4 from round 3's model: with a stored teacher or none, the same bits
    _, with_saved = round_(0.0, 4, (3, kept.state), after1)
    _, without = round_(0.0, 4, None, after1)
    assert all(torch.equal(with_saved[k], without[k]) for k in without)


# -- clients without labels -----------------------------------------------------------
def test_supervised_on_a_client_without_labels_returns_the_global_model_untouched():
    cfg = resolve(overrides={"client.algorithm": "supervised", "client.local_epochs": 5})
    model = build_model("cnn", 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = train_client(model, build_algorithm(cfg), unlabeled_only(), cfg, server_round=1,
                       partition_id=0, state=None)
    assert res.num_examples == 1 and res.metrics == {}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", ["fixmatch", "meanteacher", "uda", "shrinkmatch", "semifl", "fedsto"])
def test_every_ssl_algorithm_trains_on_unlabeled_data_alone(name):
    cfg = resolve(overrides={"client.algorithm": name, "client.local_steps": 2, "client.batch_size": 4,
                             "client.uratio": 2, "federation.rounds": 4,
                             **({} if name == "meanteacher" else {f"client.{name}.threshold": 0.05})})
    model = build_model("cnn", 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = train_client(model, build_algorithm(cfg), unlabeled_only(), cfg, server_round=3,
                       partition_id=0, state=None)
    assert math.isfinite(res.metrics["train_loss"]) and res.metrics["train_loss"] > 0
    assert res.metrics.get("train_loss_x", 0.0) == 0.0
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


# -- server-side training ---------------------------------------------------------------
def server_trainer(**over) -> ServerTrainer:
    cfg = resolve(overrides={"server.train_steps": 4, "server.train_batch_size": 8,
                             "federation.rounds": 5, **over})
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (20, 1, 28, 28), dtype=torch.uint8, generator=g)
    return ServerTrainer(cfg, x, torch.randint(0, 10, (20,), generator=g))


def test_server_training_resumes_exactly_from_its_saved_state(tmp_path):
    torch.manual_seed(0)
    model = build_model("cnn", 10)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    straight = server_trainer()
    for r in (0, 1, 2, 3):
        straight.step(model, r)
    want = {k: v.clone() for k, v in model.state_dict().items()}

    model.load_state_dict(init)
    first = server_trainer()
    for r in (0, 1):
        first.step(model, r)
    torch.save({"st": first.state_dict(), "model": model.state_dict()}, tmp_path / "ck.pt")
    ck = torch.load(tmp_path / "ck.pt", weights_only=False)
    model2 = build_model("cnn", 10)
    model2.load_state_dict(ck["model"])
    second = server_trainer()
    second.load_state_dict(ck["st"])
    for r in (2, 3):
        second.step(model2, r)
    assert all(torch.equal(want[k], v) for k, v in model2.state_dict().items())
    assert first.state_dict()["momentum"], "momentum buffers must be part of the state"
    model2.load_state_dict(ck["model"])
    fresh = server_trainer()  # the same rounds without the saved momentum differ
    for r in (2, 3):
        fresh.step(model2, r)
    assert any(not torch.equal(want[k], v) for k, v in model2.state_dict().items())


def _trained_on(threads: int, step: str, batch: int = 32) -> dict[str, torch.Tensor]:
    """The CNN after 3 server steps of a batch of 32, the caller on ``threads`` threads."""
    torch.manual_seed(0)
    model = build_model("cnn", 10)
    cfg = resolve(overrides={"server.train_steps": 3, "server.train_batch_size": batch})
    g = torch.Generator().manual_seed(1)
    trainer = ServerTrainer(cfg, torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8, generator=g),
                            torch.randint(0, 10, (64,), generator=g))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        getattr(trainer, step)(model, 1, 3)
        assert torch.get_num_threads() == threads  # the caller's count is restored
    finally:
        torch.set_num_threads(before)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_server_step_gives_the_same_bits_on_any_thread_count():
    # the server's step pins one intra-op thread (fedssl/threads.py): without it the
    # reductions of the convolutions' backward split differently on 1 and 2 threads,
    # and a seed gave 0.6452 with OMP_NUM_THREADS=1 but 0.6430 on 2 threads at round 100
    one = _trained_on(1, "step")
    assert all(torch.equal(one[k], v) for k, v in _trained_on(2, "step").items())
    assert all(torch.equal(one[k], v) for k, v in _trained_on(4, "step").items())
    unpinned = _trained_on(4, "_step")  # the same step on 4 threads, unpinned
    assert any(not torch.equal(one[k], v) for k, v in unpinned.items())


def test_static_bn_statistics_are_recomputed_on_server_data():
    model = build_model("resnet18", 10)
    x = torch.randn(16, 1, 28, 28) * 3 + 2
    assert recompute_bn_stats(model, x)
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert bn.running_mean.abs().sum() > 0 and bn.momentum == 0.1
    assert not recompute_bn_stats(build_model("cnn", 10), x), "cnn has no BN"


# -- real Flower simulations ------------------------------------------------------------
def las(out: Path, **extra) -> dict:
    return tiny(out, **{"data.server_labels_per_class": 10, "data.labeled_ratio": 0.0,
                        # threshold 0.05: every sample of an untrained 10-class model is confident
                        "client.algorithm": "semifl", "client.semifl.threshold": 0.05,
                        "server.strategy": "fedavgm", "server.server_momentum": 0.5,
                        "server.warmup_steps": 0, "server.train_steps": 10, **extra})


def rows(out: Path) -> list[dict[str, str]]:
    with open(out / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_server_step_changes_the_global_model_in_a_flower_simulation(tmp_path):
    from fedssl.simulation import run_experiment

    on = run_experiment(resolve(overrides=las(tmp_path / "on", **{"run.checkpoint_every": 1})), quiet=True)
    off = run_experiment(resolve(overrides=las(tmp_path / "off", **{"server.train_steps": 0,
                                                                    "run.checkpoint_every": 1})), quiet=True)
    assert on["status"] == off["status"] == "ok" and on["final"]["round"] == 2
    a = runlog.load_checkpoint(tmp_path / "on")["arrays"]
    b = runlog.load_checkpoint(tmp_path / "off")["arrays"]
    assert any(not np.array_equal(a[k], b[k]) for k in a), "server training had no effect"
    r_on, r_off = rows(tmp_path / "on"), rows(tmp_path / "off")
    assert all(float(r["server_steps"]) == 10 for r in r_on)
    assert all(not r.get("server_steps") for r in r_off)
    assert [r["clients"] for r in r_on] == ["4", "4"]


def test_semifl_clients_without_a_confident_sample_are_left_out(tmp_path):
    """SemiFL's code leaves a client with no confident pseudo-label inactive: it runs no
    step and its untouched model is not averaged in. Threshold 1: nobody is confident."""
    from fedssl.simulation import run_experiment

    out = tmp_path / "none"
    summary = run_experiment(resolve(overrides=las(out, **{"client.semifl.threshold": 1.0})), quiet=True)
    assert summary["status"] == "no_client_update"
    assert [(r["clients"], r["idle_clients"], r["status"]) for r in rows(out)] == [("0", "4", "no_update")] * 2
    assert all(float(r["server_steps"]) == 10 for r in rows(out))  # the server still trains


def test_semifl_iterates_epochs_over_its_confident_subset(monkeypatch):
    """SemiFL's round: local_epochs passes, in batches of batch_size x uratio, over the
    confident samples only; a client with none runs no step and is idle."""
    import fedssl.algorithms.semifl as semifl_mod

    data = unlabeled_only(12)
    confident = torch.tensor([1, 4, 5, 9, 10])
    probs = torch.full((12, 10), 0.05)
    probs[:, 0] = 0.55
    probs[confident, 0], probs[confident, 1] = 0.96, 0.0
    monkeypatch.setattr(semifl_mod, "global_pseudo_probs", lambda *a: probs.clone())
    drawn = spy_unlabeled_batches(monkeypatch, semifl_mod.SemiFL)
    cfg = resolve(overrides={"client.algorithm": "semifl", "client.local_epochs": 3, "client.batch_size": 2})
    assert (cfg.client.uratio, cfg.client.lr, cfg.client.max_grad_norm) == (1, 0.03, 1.0)  # SemiFL's code
    res = train_client(build_model("cnn", 10), build_algorithm(cfg), data, cfg, server_round=1, partition_id=0,
                       state=None)
    assert len(drawn) == 3 * math.ceil(len(confident) / 2) and not res.idle
    assert set(torch.cat(drawn).tolist()) == set(confident.tolist())  # nothing else is drawn
    # the batch mask is 1 on the pool; the shard's confident share is logged beside it
    assert res.metrics["train_mask"] == 1.0 and res.metrics["train_selected"] == pytest.approx(5 / 12)
    probs[confident, 0] = 0.55  # now nobody is confident
    drawn.clear()
    res = train_client(build_model("cnn", 10), build_algorithm(cfg), data, cfg, server_round=1, partition_id=0,
                       state=None)
    assert res.idle and not drawn


def test_max_grad_norm_bounds_one_plain_sgd_step():
    """client.max_grad_norm: one SGD step without momentum or weight decay moves the
    weights by lr x the clipped gradient, so by at most lr x max_grad_norm."""
    data = ClientData(*(lambda x, y: (x, y, x[:0], y[:0]))(
        torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)),
        torch.arange(8) % 10), flip=False)
    moved = {}
    for clip in (0.0, 1e-3):
        cfg = resolve(overrides={"client.algorithm": "supervised", "client.local_steps": 1, "client.batch_size": 8,
                                 "client.momentum": 0.0, "client.weight_decay": 0.0, "client.lr": 0.5,
                                 "client.lr_schedule": "constant", "client.max_grad_norm": clip})
        torch.manual_seed(0)
        model = build_model("cnn", 10)
        before = [p.detach().clone() for p in model.parameters()]
        train_client(model, build_algorithm(cfg), data, cfg, server_round=1, partition_id=0, state=None)
        moved[clip] = torch.sqrt(sum(((p - b) ** 2).sum() for p, b in zip(model.parameters(), before))).item()
    assert moved[1e-3] == pytest.approx(0.5 * 1e-3, rel=1e-3)  # the raw gradient is far longer than 1e-3
    assert moved[0.0] > 100 * moved[1e-3]


def test_kill9_then_resume_keeps_server_training_exact(tmp_path):
    """Server optimizer state and the FedAvgM momentum survive kill -9 + --resume."""
    from fedssl.simulation import run_experiment

    killed = tmp_path / "killed"
    over = las(killed, **{"federation.rounds": 4, "client.local_steps": 20, "run.checkpoint_every": 1,
                          "server.warmup_steps": 5})
    kill9_after_checkpoint(over, killed)
    assert runlog.load_checkpoint(killed)["server_training"]["momentum"]
    resumed = run_cli("run", "--resume", str(killed), "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run_experiment(resolve(overrides={**over, "run.out_dir": str(tmp_path / "straight")}), quiet=True)
    timeless = lambda rs: [{k: v for k, v in r.items()  # noqa: E731
                            if not k.startswith(("wall_s", "round_s", "t_"))} for r in rs]
    got, want = rows(killed), rows(tmp_path / "straight")
    assert [r["round"] for r in got] == ["1", "2", "3", "4"]
    assert timeless(got) == timeless(want)


def test_summary_pairs_each_variant_with_server_only_on_the_same_seed(tmp_path):
    """benchmarks/labels_at_server_summary.py: per-seed gains, their mean, the gain by
    round, and the gap to a reference; a seed without a finished run is left out."""
    import subprocess
    import sys

    def put(variant: str, seed: int, accs: dict[int, float]) -> None:
        d = tmp_path / "L10_dir0.3" / variant / f"seed{seed}"
        d.mkdir(parents=True)
        (d / "summary.json").write_text("{}")
        (d / "metrics.csv").write_text("round,acc_all\n" + "".join(f"{r},{a}\n" for r, a in accs.items()))

    for s, base in ((0, 0.60), (1, 0.70)):
        put("server_only", s, {10: base, 20: base})
        put("semifl", s, {10: base + 0.02, 20: base + 0.05 + 0.01 * s})
        put("central", s, {10: base + 0.05, 20: base + 0.10})
    put("fedsto", 0, {10: 0.5, 20: 0.7})  # seed 1 unfinished
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "labels_at_server_summary.py"
    out = subprocess.run([sys.executable, str(script), str(tmp_path),
                          "--variants", "semifl,fedsto,central", "--reference", "central", "--seeds", "0,1",
                          "--rounds", "10,20"], capture_output=True, text=True, check=True).stdout
    rows = {line.split(" | ")[0].strip("| "): line for line in out.splitlines() if line.startswith("| ")}
    assert "+5.0 / +6.0 | **+5.5** | +2.0 | +5.5 | -4.5 (2 seeds)" in rows["semifl"]
    assert "| fedsto | 1 | 0.7000 | +10.0 | **+10.0** |" in rows["fedsto"]
    assert "**+10.0** | +5.0 | +10.0 | +0.0 (2 seeds)" in rows["central"]


def test_semifl_oracle_arms_keep_only_right_pseudo_labels(monkeypatch):
    """benchmarks/semifl_oracle.py (a diagnostic): the clean arm keeps the confident
    samples whose pseudo-label is right and labels them (and every Mix partner) with the
    truth; the all-true arm keeps every sample."""
    import fedssl.algorithms.semifl as semifl_mod

    probs = torch.tensor([[0.97, 0.02, 0.01], [0.01, 0.98, 0.01], [0.5, 0.3, 0.2], [0.02, 0.01, 0.97]])
    y_true = torch.tensor([0, 2, 1, 2])  # sample 1 is confidently wrong, sample 2 not confident
    monkeypatch.setattr(semifl_mod, "global_pseudo_probs", lambda *a, **k: probs.clone())
    data = ClientData(torch.zeros(0, 1, 2, 2, dtype=torch.uint8), torch.zeros(0, dtype=torch.long),
                      torch.zeros(4, 1, 2, 2, dtype=torch.uint8), y_true, flip=False)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    root = Path(__file__).resolve().parents[1]
    for arm, kept in (("SemiFLCleanPL", [0, 3]), ("SemiFLAllTrue", [0, 1, 2, 3])):
        alg = build_algorithm(resolve(overrides={"client.algorithm": f"{root}/benchmarks/semifl_oracle.py:{arm}"}))
        alg.begin_round(model, RoundContext(1), data)
        assert alg._confident.tolist() == kept
        assert torch.equal(alg._probs.argmax(dim=1), y_true) and alg._selected_share == len(kept) / 4
