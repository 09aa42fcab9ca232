"""Each algorithm's loss against a hand computation on a batch whose predictions are
known, and the trainer's persistent EMA teacher against its documented rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.testing import assert_close

from fedssl.algorithms import Batch, RoundContext
from fedssl.registry import ALGORITHMS
from fedssl.algorithms.shrinkmatch import shrink_class_space
from fedssl.algorithms.uda import sharpen
from fedssl.config import resolve
from fedssl.models import build_model
from fedssl.state import ClientStateStore
from fedssl.training import ClientData, build_algorithm, train_client


# -- a model whose logits we choose -----------------------------------------------
class Lookup(nn.Module):
    """logits = table[sample id]; an 'image' is just its id, stored in x[:, 0]."""

    def __init__(self, rows: list[list[float]]) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.tensor(rows, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x[:, 0].long()]


def ids(*i: int) -> torch.Tensor:
    return torch.tensor(i, dtype=torch.float64)[:, None]


def algorithm(name: str, **params: object):
    """The algorithm with its own keys ([client.<name>]) set."""
    cfg = resolve(overrides={"client.algorithm": name, **{f"client.{name}.{k}": v for k, v in params.items()}})
    return build_algorithm(cfg)


# -- numpy reference math ---------------------------------------------------------
def log_softmax(z) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    return z - np.log(np.exp(z - z.max()).sum()) - z.max()


def softmax(z) -> np.ndarray:
    return np.exp(log_softmax(z))


def ce(z, y: int) -> float:
    return float(-log_softmax(z)[y])


def scalar(x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


# Labeled rows 0, 1 (labels 0, 1) are shared by all algorithm tests.
LABELED = [[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]]
Y_L = torch.tensor([0, 1])
LOSS_X = (ce(LABELED[0], 0) + ce(LABELED[1], 1)) / 2


def test_supervised_is_mean_cross_entropy_on_labeled():
    model = Lookup(LABELED)
    alg = algorithm("supervised")
    loss, metrics = alg.loss(model, Batch(x_l=[ids(0, 1)], y_l=Y_L, x_u=[]), RoundContext(1))
    assert_close(loss, scalar(LOSS_X))
    assert metrics["loss_x"] == pytest.approx(LOSS_X)


# -- FixMatch -----------------------------------------------------------------------
def test_fixmatch_masks_below_threshold_and_uses_teacher_argmax():
    tau = 0.9  # for [a, 0, 0], max prob = e^a / (e^a + 2) = tau at e^a = 18
    above, below = math.log(18 * 1.01), math.log(18 * 0.99)
    teacher = Lookup([
        [above, 0.0, 0.0],  # u0: confident, class 0
        [0.0, 0.0, below],  # u1: just below tau -> masked out
        [0.0, 5.0, 0.0],  # u2: confident, class 1
    ])
    # Student: labeled rows, then its own weak-view rows (deliberately disagreeing with
    # the teacher: if they were used, mask and labels would differ), then strong rows.
    student = Lookup(LABELED + [[0.0, 0.0, 0.0], [0.0, 0.0, 9.0], [9.0, 0.0, 0.0]]
                     + [[1.0, 2.0, 0.0], [0.0, 1.0, 0.0], [2.0, 0.0, 1.0]])
    batch = Batch(x_l=[ids(0, 1)], y_l=Y_L, x_u=[ids(0, 1, 2), ids(5, 6, 7)])
    # the teacher reads u_weak ids 0..2 from its own table
    alg = algorithm("fixmatch", threshold=tau, lambda_u=2.0)
    loss, metrics = alg.loss(student, batch, RoundContext(1, teacher=teacher))

    loss_u = (ce([1.0, 2.0, 0.0], 0) + 0.0 + ce([2.0, 0.0, 1.0], 1)) / 3
    assert_close(loss, scalar(LOSS_X + 2.0 * loss_u))
    assert metrics["mask"] == pytest.approx(2 / 3)
    loss.backward()
    assert teacher.table.grad is None, "pseudo-labels must not carry gradient"
    assert student.table.grad[2:5].abs().sum() == 0, "the student's weak view is unused"


def test_fixmatch_pseudo_label_accuracy_counts_only_masked_samples():
    teacher = Lookup([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [1.0, 0.0, 0.0]])
    student = Lookup(LABELED + [[0.0, 0.0, 0.0]] * 3)
    batch = Batch(x_l=[ids(0, 1)], y_l=Y_L, x_u=[ids(0, 1, 2), ids(2, 3, 4)],
                  y_u=torch.tensor([0, 2, 0]))  # u1 pseudo-label (1) is wrong; u2 is masked
    _, metrics = algorithm("fixmatch").loss(student, batch, RoundContext(1, teacher=teacher))
    assert metrics["pl_acc"] == pytest.approx(0.5)


# -- Mean Teacher -------------------------------------------------------------------
def test_meanteacher_sigmoid_rampup():
    alg = algorithm("meanteacher", lambda_u=3.0, rampup_rounds=4)
    w = lambda rnd, step, total=4: alg.consistency_weight(RoundContext(rnd, step=step, total_steps=total))
    assert w(1, 0) == pytest.approx(3.0 * math.exp(-5.0))
    # rounds done = 2 + 1/4 of round 3 -> t = 2.25 / 4
    assert w(3, 1) == pytest.approx(3.0 * math.exp(-5.0 * (1 - 2.25 / 4) ** 2))
    assert w(5, 0) == pytest.approx(3.0) and w(9, 3) == pytest.approx(3.0)
    weights = [w(r, s) for r in range(1, 6) for s in range(4)]
    assert all(a < b for a, b in zip(weights, weights[1:16])), "rises within and across rounds"
    assert algorithm("meanteacher", lambda_u=3.0, rampup_rounds=0).consistency_weight(
        RoundContext(1)) == 3.0


def test_meanteacher_loss_is_rampup_weighted_mse_of_softmaxes():
    teacher_rows = [[1.0, 0.0, -1.0], [0.0, 2.0, 0.0]]
    student_rows = [[0.0, 0.5, 0.0], [3.0, 0.0, 1.0]]
    teacher = Lookup(teacher_rows)
    student = Lookup(LABELED + student_rows)
    batch = Batch(x_l=[ids(0, 1)], y_l=Y_L, x_u=[ids(2, 3), ids(0, 1)])  # student view, teacher view
    alg = algorithm("meanteacher", lambda_u=3.0, rampup_rounds=4)
    ctx = RoundContext(3, step=1, total_steps=4, teacher=teacher)
    loss, metrics = alg.loss(student, batch, ctx)

    mse = np.mean([(softmax(s) - softmax(t)) ** 2 for s, t in zip(student_rows, teacher_rows)])
    weight = 3.0 * math.exp(-5.0 * (1 - 2.25 / 4) ** 2)
    assert_close(loss, scalar(LOSS_X + weight * mse))
    assert metrics["loss_u"] == pytest.approx(mse)
    assert metrics["rampup"] == pytest.approx(weight)


# -- UDA ----------------------------------------------------------------------------
def test_uda_sharpen():
    p = torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64)
    assert_close(sharpen(p, 0.5), torch.tensor([[0.25, 0.09, 0.04]], dtype=torch.float64) / 0.38)
    assert_close(sharpen(p, 1.0), p)


def test_uda_loss_is_masked_kl_to_sharpened_teacher():
    teacher_rows = [[2.0, 1.0, 0.0],  # max prob 0.665 < 0.7: masked out
                    [3.0, 0.0, 0.0],  # 0.909
                    [0.0, 0.0, 2.5]]  # 0.859
    strong_rows = [[0.0, 1.0, 0.0], [1.0, 0.5, 0.0], [0.0, 1.0, 2.0]]
    teacher = Lookup(teacher_rows)
    student = Lookup(LABELED + strong_rows)
    batch = Batch(x_l=[ids(0, 1)], y_l=Y_L, x_u=[ids(0, 1, 2), ids(2, 3, 4)])
    alg = algorithm("uda", threshold=0.7, temperature=0.5, lambda_u=1.5)
    loss, metrics = alg.loss(student, batch, RoundContext(1, teacher=teacher))

    def kl(t_logits, s_logits):
        target = softmax(np.asarray(t_logits) / 0.5)  # sharpened = softmax(logits / T)
        return float(np.sum(target * (np.log(target) - log_softmax(s_logits))))

    loss_u = (kl(teacher_rows[1], strong_rows[1]) + kl(teacher_rows[2], strong_rows[2])) / 3
    assert_close(loss, scalar(LOSS_X + 1.5 * loss_u))
    assert metrics["mask"] == pytest.approx(2 / 3)


# -- ShrinkMatch --------------------------------------------------------------------
def test_shrink_class_space_removes_just_below_top1_until_confident():
    probs = torch.tensor([
        # top-1 = class 2 (0.5). Removing class 1 (0.3): 0.5/0.7 = 0.71 < 0.8; also
        # removing class 4 (0.1): 0.5/0.6 = 0.83 -> stop. Kept {2, 0, 3}.
        [0.05, 0.3, 0.5, 0.05, 0.1],
        # top-1 = class 3; removing class 2 alone gives 0.6/0.7 = 0.86. Kept {3, 1, 4, 0}.
        [0.02, 0.05, 0.3, 0.6, 0.03],
        # 0.4/0.7, 0.4/0.55, then 0.4/0.45 = 0.89: only the last class stays with the top-1.
        [0.4, 0.3, 0.15, 0.1, 0.05],
    ])
    s = shrink_class_space(probs, 0.8)
    assert s.pseudo_label.tolist() == [2, 3, 0]
    assert s.keep.tolist() == [
        [True, False, True, True, False],
        [True, True, False, True, True],
        [True, False, False, False, True],
    ]
    assert s.removed.tolist() == [2, 1, 3]
    assert s.valid.all()
    assert_close(s.confidence, torch.tensor([0.5 / 0.6, 0.6 / 0.7, 0.4 / 0.45]))

    hard = shrink_class_space(probs[2:], 0.95)  # 0.89 is the best any shrinking reaches
    assert not hard.valid.any()
    assert hard.keep.tolist() == [[True, False, False, False, True]], "stops at the last class"
    assert not shrink_class_space(torch.tensor([[0.6, 0.4]]), 0.8).valid.any(), "binary: nothing to drop"


def test_shrinkmatch_loss_and_reweighting():
    tau = 0.8
    teacher_probs = [
        [0.9, 0.05, 0.03, 0.02],  # certain: FixMatch term, pseudo-label 0
        [0.12, 0.5, 0.3, 0.08],  # uncertain: drop class 2, then class 0 -> {1, 3}, 0.5/0.58
        [0.35, 0.3, 0.2, 0.15],  # uncertain, unreachable: 0.35/0.5 = 0.7 < 0.8 -> weight 0
    ]
    strong_rows = [[0.5, 1.0, 0.0, 0.0], [1.0, 0.2, 2.0, -1.0], [0.0, 0.0, 1.0, 0.0]]
    teacher = Lookup(np.log(teacher_probs).tolist())
    labeled = [row + [0.0] for row in LABELED]
    student = Lookup(labeled + strong_rows)
    batch = Batch(x_l=[ids(0, 1)], y_l=Y_L, x_u=[ids(0, 1, 2), ids(2, 3, 4)])
    alg = algorithm("shrinkmatch", threshold=tau, lambda_u=2.0)
    ctx = RoundContext(1, teacher=teacher)
    loss, metrics = alg.loss(student, batch, ctx)

    loss_x = (ce(labeled[0], 0) + ce(labeled[1], 1)) / 2
    loss_u = ce(strong_rows[0], 0) / 3
    # shrunk space {1, 3}: cross-entropy of the student's renormalised logits, weighted
    # by the sample's original confidence 0.5 (principle 1)
    loss_shrink = 0.5 * ce([strong_rows[1][1], strong_rows[1][3]], 0) / 3
    certain_ratio = 1 / 3  # first step: the batch's mask ratio (principle 2)
    assert_close(loss, scalar(loss_x + 2.0 * (loss_u + certain_ratio * loss_shrink)))
    assert metrics["mask"] == pytest.approx(1 / 3)
    assert metrics["shrink_mask"] == pytest.approx(1 / 3)
    assert metrics["removed"] == pytest.approx((2 + 2) / 2)

    loss.backward()
    grad_u1 = student.table.grad[3]
    assert grad_u1[[0, 2]].abs().sum() == 0, "removed classes get no gradient"
    assert grad_u1[[1, 3]].abs().min() > 0
    assert student.table.grad[4].abs().sum() == 0, "unreachable sample contributes nothing"

    # the certain ratio is an EMA kept in the client's state across steps and rounds
    assert_close(ctx.state["certain_ratio"], torch.tensor([1 / 3]))
    ctx.state["certain_ratio"] = torch.tensor([0.5])
    _, metrics = alg.loss(student, batch, ctx)
    assert metrics["certain_ratio"] == pytest.approx(0.99 * 0.5 + 0.01 / 3)


def test_shrinkmatch_certain_ratio_persists_in_client_state(tmp_path):
    """Principle 2's EMA lives in the client's saved state and resumes next round."""
    cfg = resolve(overrides={"client.algorithm": "shrinkmatch", "client.local_steps": 2,
                             "client.batch_size": 4, "client.uratio": 1, "client.shrinkmatch.threshold": 0.99})
    alg, data, store = build_algorithm(cfg), random_data(), ClientStateStore(tmp_path)
    res1 = train_client(build_model("cnn", 10), alg, data, cfg, server_round=1, partition_id=0, state=None)
    assert res1.metrics["train_mask"] == 0, "an untrained model is never 99% confident"
    assert_close(res1.state["algo.certain_ratio"], torch.tensor([0.0]))
    res1.state["algo.certain_ratio"] = torch.tensor([0.5])  # pretend earlier rounds were confident
    store.save(0, "run0", 1, res1.state)

    res2 = train_client(build_model("cnn", 10), alg, data, cfg, server_round=2, partition_id=0,
                        state=store.load(0, "run0", before_round=2))
    assert_close(res2.state["algo.certain_ratio"], torch.tensor([0.5 * 0.99 ** 2]))
    assert res2.metrics["train_certain_ratio"] == pytest.approx(0.5 * (0.99 + 0.99 ** 2) / 2)


@pytest.mark.parametrize("name", ["fixmatch", "meanteacher", "uda", "shrinkmatch"])
def test_semi_supervised_losses_are_finite_on_real_views(name):
    """Each registered algorithm trains one CNN step without NaNs and reports loss_u."""
    cfg = resolve(overrides={"client.algorithm": name, "client.local_steps": 1,
                             "client.batch_size": 4, "client.uratio": 2})
    result = train_client(build_model("cnn", 10), build_algorithm(cfg), random_data(), cfg,
                          server_round=1, partition_id=0, state=None)
    assert math.isfinite(result.metrics["train_loss"])
    assert "train_loss_u" in result.metrics


@pytest.mark.parametrize("name, missing", [
    (name, missing)
    for name in ("fixmatch", "meanteacher", "uda", "shrinkmatch")
    for missing in ("labeled", "unlabeled")])
def test_clients_with_only_one_kind_of_data_still_train(name, missing):
    full = random_data()
    empty_x, empty_y = full.x_l[:0], full.y_l[:0]
    data = (ClientData(empty_x, empty_y, full.x_u, full.y_u, flip=False) if missing == "labeled"
            else ClientData(full.x_l, full.y_l, empty_x, empty_y, flip=False))
    cfg = resolve(overrides={"client.algorithm": name, "client.local_steps": 1, "client.batch_size": 4})
    res = train_client(build_model("cnn", 10), build_algorithm(cfg), data, cfg,
                       server_round=1, partition_id=0, state=None)
    assert math.isfinite(res.metrics["train_loss"])
    if missing == "unlabeled":
        assert res.metrics["train_loss_u"] == 0.0


# -- the persistent EMA teacher -------------------------------------------------------
def random_data(n: int = 8, seed: int = 0) -> ClientData:
    g = torch.Generator().manual_seed(seed)
    img = lambda: torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g)
    lab = lambda: torch.randint(0, 10, (n,), generator=g)
    return ClientData(img(), lab(), img(), lab(), flip=False)


def teacher_of(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len("teacher."):]: v for k, v in state.items() if k.startswith("teacher.")}


def perturbed(sd: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in sd.items()}


def test_ema_teacher_persists_and_meets_the_global_model_by_gap(tmp_path):
    m, s = 0.9, 0.5  # ema_decay, teacher_sync
    cfg = resolve(overrides={"client.algorithm": "fixmatch", "client.local_steps": 1,
                             "client.batch_size": 4, "client.uratio": 1, "client.lr": 0.5,
                             "client.momentum": 0.0, "client.ema_decay": m,
                             "client.teacher_sync": s})
    alg, data, store, pid = build_algorithm(cfg), random_data(), ClientStateStore(tmp_path), 3
    model = build_model("cnn", 10)
    assert not list(model.buffers()), "the check below treats every entry as a parameter"

    def train(rnd: int, global_sd: dict[str, torch.Tensor]) -> tuple[dict, dict]:
        model.load_state_dict(global_sd)
        res = train_client(model, alg, data, cfg, server_round=rnd, partition_id=pid,
                           state=store.load(pid, "run0", before_round=rnd))
        store.save(pid, "run0", rnd, res.state)
        return teacher_of(res.state), {k: v.clone() for k, v in model.state_dict().items()}

    # Round 1, no saved state: the teacher starts at the global model, then one EMA step.
    g1 = {k: v.clone() for k, v in model.state_dict().items()}
    t1, student1 = train(1, g1)
    assert max((student1[k] - g1[k]).abs().max() for k in g1) > 1e-3, "the step moved the student"
    for k in g1:
        assert_close(t1[k], m * g1[k] + (1 - m) * student1[k])

    # Round 2 (gap 1): teacher <- s * teacher + (1 - s) * global, then the EMA step.
    g2 = perturbed(g1, seed=2)
    t2, student2 = train(2, g2)
    for k in g1:
        assert_close(t2[k], m * (s * t1[k] + (1 - s) * g2[k]) + (1 - m) * student2[k])

    # Not sampled in rounds 3 and 4; round 5 has gap 3, so it leans on the global by s^3.
    g5 = perturbed(g1, seed=5)
    t5, student5 = train(5, g5)
    for k in g1:
        synced = s ** 3 * t2[k] + (1 - s ** 3) * g5[k]
        assert_close(t5[k], m * synced + (1 - m) * student5[k])
    assert max((t5[k] - (m * g5[k] + (1 - m) * student5[k])).abs().max() for k in g1) > 1e-3, \
        "the old teacher still contributes after a gap"


def test_algorithms_without_teacher_keep_no_teacher_state():
    cfg = resolve(overrides={"client.algorithm": "supervised", "client.local_steps": 1,
                             "client.batch_size": 4})
    res = train_client(build_model("cnn", 10), build_algorithm(cfg), random_data(), cfg,
                       server_round=1, partition_id=0, state=None)
    assert not teacher_of(res.state)
    assert set(ALGORITHMS) >= {"supervised", "fixmatch", "meanteacher", "uda", "shrinkmatch"}


def test_round_lr_is_half_cosine_over_the_run_or_constant():
    import math

    from fedssl.config import resolve
    from fedssl.training import round_lr

    cfg = resolve(overrides={"client.lr": 0.1, "federation.rounds": 10})
    lrs = [round_lr(cfg, r) for r in range(1, 11)]
    assert lrs[0] == 0.1 and all(a > b > 0 for a, b in zip(lrs, lrs[1:]))
    assert math.isclose(round_lr(cfg, 6), 0.05)
    assert round_lr(cfg.replace(**{"client.lr_schedule": "constant"}), 9) == 0.1


@pytest.mark.parametrize(("labels", "overrides", "steps"), [
    (12, {}, 50),  # two epochs are 2 steps: the floor, the reference trained to its plateau
    (3000, {}, 188),  # two epochs over 3 000 labels in batches of 32 exceed it
    (12, {"client.supervised.min_steps": 0}, 2),  # the epochs alone
    (12, {"client.local_steps": 7}, 7),  # fixed steps override both
])
def test_supervised_trains_at_least_min_steps_under_epochs(labels, overrides, steps):
    from fedssl.data.tensors import ClientData
    from fedssl.training import build_algorithm, num_local_steps

    cfg = resolve(overrides={"client.algorithm": "supervised", **overrides})
    x = torch.zeros(labels + 100, 1, 28, 28, dtype=torch.uint8)
    y = torch.zeros(labels + 100, dtype=torch.long)
    data = ClientData(x[:labels], y[:labels], x[labels:], y[labels:])
    assert num_local_steps(cfg, data, build_algorithm(cfg)) == steps
    if not overrides:  # an SSL algorithm's epochs are untouched by supervised's floor
        fixmatch = resolve(overrides={"client.algorithm": "fixmatch"})
        assert num_local_steps(fixmatch, data, build_algorithm(fixmatch)) == 2
