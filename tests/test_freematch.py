"""FreeMatch: the self-adaptive thresholds and the loss (fairness term included)
against hand computations, the fairness term against USB's own form, the thresholds'
state through the client state store, and a real Flower simulation."""

from __future__ import annotations

import copy
import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from fedssl.algorithms import Batch, RoundContext
from fedssl.algorithms.freematch import FreeMatchParams, fairness_loss, self_adaptive_mask, update_thresholds
from fedssl.config import resolve
from fedssl.models import build_model
from fedssl.state import ClientStateStore
from fedssl.training import ClientData, build_algorithm, train_client
from tests.conftest import assert_bad_input, kill9_after_checkpoint, run_cli, tiny
from tests.test_algorithms import LABELED, LOSS_X, Y_L, Lookup, ce, ids, random_data, scalar, softmax

# the teacher's probabilities on four unlabeled samples: y^ = 0, 1, 2, 0
TEACHER = [[0.8, 0.1, 0.1], [0.2, 0.5, 0.3], [0.3, 0.3, 0.4], [0.55, 0.4, 0.05]]
# a client's saved statistics: tau, p~ (class-wise confidence), h~ (pseudo-label histogram)
SAVED = {"global_threshold": scalar(0.6), "class_probs": torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64),
         "label_hist": torch.tensor([0.4, 0.4, 0.2], dtype=torch.float64)}


def freematch(**params: object):
    return build_algorithm(resolve(overrides={"client.algorithm": "freematch",
                                              **{f"client.freematch.{k}": v for k, v in params.items()}}))


def saved() -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in SAVED.items()}


# -- self-adaptive thresholding ------------------------------------------------------
def test_thresholds_update_and_mask_by_hand():
    """m = 0.5. Batch: mean max q = (0.8 + 0.5 + 0.4 + 0.55) / 4 = 0.5625, column means
    (0.4625, 0.325, 0.2125), pseudo-label histogram (2, 1, 1) / 4. Class-wise
    thresholds tau * p~ / max p~ = (0.58125, 0.3774, 0.2491): sample 3 (class 0 at
    0.55) is left out although 0.55 would pass class 1's threshold."""
    state, probs = saved(), torch.tensor(TEACHER, dtype=torch.float64)
    update_thresholds(state, probs, FreeMatchParams(ema_p=0.5))
    assert state["global_threshold"].item() == pytest.approx(0.5 * 0.6 + 0.5 * 0.5625)
    assert state["class_probs"].numpy() == pytest.approx([0.48125, 0.3125, 0.20625])
    assert state["label_hist"].numpy() == pytest.approx([0.45, 0.325, 0.225])
    mask, pseudo_label = self_adaptive_mask(probs, state)
    assert pseudo_label.tolist() == [0, 1, 2, 0]
    assert mask.tolist() == [1.0, 1.0, 1.0, 0.0]


def test_first_step_starts_from_uniform_and_quantile_and_clip_options():
    """No saved state: tau_0 = 1/C, p~_0 = h~_0 = uniform (USB's initial values). The
    quantile option takes the batch's 0.8-quantile of max q (linear interpolation
    between 0.55 and 0.8: 0.65); clipping caps tau at 0.95."""
    probs = torch.tensor(TEACHER, dtype=torch.float64)
    state: dict[str, torch.Tensor] = {}
    update_thresholds(state, probs, FreeMatchParams(ema_p=0.9))
    assert state["global_threshold"].item() == pytest.approx(0.9 / 3 + 0.1 * 0.5625)
    assert state["class_probs"].numpy() == pytest.approx(0.9 / 3 + 0.1 * np.array([0.4625, 0.325, 0.2125]))
    assert state["label_hist"].numpy() == pytest.approx(0.9 / 3 + 0.1 * np.array([0.5, 0.25, 0.25]))

    state = {}
    update_thresholds(state, probs, FreeMatchParams(ema_p=0.9, use_quantile=True))
    assert state["global_threshold"].item() == pytest.approx(0.9 / 3 + 0.1 * 0.65)

    sure = torch.tensor([[0.99, 0.005, 0.005]], dtype=torch.float64)
    state = {"global_threshold": scalar(0.97)}
    update_thresholds(state, sure, FreeMatchParams(ema_p=0.5, clip_thresh=True))
    assert state["global_threshold"].item() == pytest.approx(0.95)
    state = {"global_threshold": scalar(0.97)}
    update_thresholds(state, sure, FreeMatchParams(ema_p=0.5))
    assert state["global_threshold"].item() == pytest.approx(0.98)


# -- the loss --------------------------------------------------------------------------
def test_loss_by_hand_with_the_fairness_term():
    """Labeled CE + lambda_u x masked pseudo-label CE on the strong view + lambda_e x
    L_f, L_f over the three masked samples, whose strong-view argmax is (0, 0, 2): class
    1 has no selected prediction, so its 1/h- reads 0."""
    strong = [[2.0, 0.5, 0.0], [1.0, 0.8, 0.2], [0.0, 0.3, 1.5], [3.0, 0.0, 0.0]]
    teacher = Lookup(np.log(TEACHER).tolist())
    student = Lookup(LABELED + strong)
    batch = Batch(x_l=[ids(0, 1)], y_l=Y_L, x_u=[ids(0, 1, 2, 3), ids(2, 3, 4, 5)])
    ctx = RoundContext(1, teacher=teacher, state=saved())
    loss, metrics = freematch(ema_p=0.5, lambda_u=2.0, lambda_e=0.5).loss(student, batch, ctx)

    tau, p_model, h_model = 0.58125, np.array([0.48125, 0.3125, 0.20625]), np.array([0.45, 0.325, 0.225])
    loss_u = (ce(strong[0], 0) + ce(strong[1], 1) + ce(strong[2], 2)) / 4  # sample 3 masked out
    p_s = np.array([softmax(z) for z in strong[:3]])
    hist_s = np.array([2, 0, 1]) / 3
    mod_mean = p_s.mean(0) * np.array([1 / hist_s[0], 0.0, 1 / hist_s[2]])
    target = (p_model / h_model) / (p_model / h_model).sum()
    loss_f = float((target * np.log(mod_mean / mod_mean.sum() + 1e-12)).sum())
    assert loss_f < 0  # a negative cross-entropy
    assert_close(loss, scalar(LOSS_X + 2.0 * loss_u + 0.5 * loss_f))
    assert metrics["loss_f"].item() == pytest.approx(loss_f)
    assert metrics["loss_u"].item() == pytest.approx(loss_u)
    assert metrics["mask"].item() == pytest.approx(3 / 4)
    assert metrics["global_threshold"].item() == pytest.approx(tau)
    assert ctx.state["global_threshold"].item() == pytest.approx(tau), "the step's update is kept in the state"

    loss.backward()
    assert teacher.table.grad is None, "the teacher only labels"
    assert student.table.grad[5].abs().sum() == 0, "a masked-out sample gets no gradient"


def usb_fairness(logits_s: torch.Tensor, mask: torch.Tensor, p_model: torch.Tensor,
                 label_hist: torch.Tensor) -> torch.Tensor:
    """USB's ``entropy_loss`` as written there (boolean selection, inf replaced by 0)."""
    logits_s = logits_s[mask.bool()]
    prob_s = logits_s.softmax(dim=-1)
    hist_s = torch.bincount(prob_s.argmax(dim=-1), minlength=logits_s.shape[1]).to(logits_s.dtype)
    hist_s = hist_s / hist_s.sum()
    scale = 1 / label_hist
    scale[scale == float("inf")] = 0.0
    mod_p = p_model * scale
    mod_p = (mod_p / mod_p.sum()).reshape(1, -1)
    scale_s = 1 / hist_s
    scale_s[scale_s == float("inf")] = 0.0
    mod_mean = prob_s.mean(dim=0, keepdim=True) * scale_s
    mod_mean = mod_mean / mod_mean.sum(dim=-1, keepdim=True)
    return (mod_p * torch.log(mod_mean + 1e-12)).sum(dim=1).mean()


@pytest.mark.parametrize("seed", range(4))
def test_fairness_term_equals_usbs_form_in_value_and_gradient(seed):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(16, 5, generator=g, dtype=torch.float64)).requires_grad_()
    mask = (torch.rand(16, generator=g) < 0.5).to(torch.float64)
    p_model = torch.rand(5, generator=g, dtype=torch.float64).softmax(0)
    label_hist = torch.rand(5, generator=g, dtype=torch.float64).softmax(0)
    ours = fairness_loss(logits, mask, p_model, label_hist)
    (g_ours,) = torch.autograd.grad(ours, logits)
    theirs = usb_fairness(logits, mask, p_model, label_hist)
    (g_theirs,) = torch.autograd.grad(theirs, logits)
    assert_close(ours, theirs)
    assert_close(g_ours, g_theirs)
    assert g_ours.abs().sum() > 0


def test_fairness_term_is_zero_without_a_masked_sample():
    """USB skips the term then; here it is 0 with a zero (finite) gradient."""
    logits = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    loss = fairness_loss(logits, torch.zeros(6, dtype=torch.float64), torch.full((4,), 0.25, dtype=torch.float64),
                         torch.full((4,), 0.25, dtype=torch.float64))
    (grad,) = torch.autograd.grad(loss, logits)
    assert loss.item() == 0.0 and torch.equal(grad, torch.zeros_like(grad))


# -- the client state store ------------------------------------------------------------
def test_thresholds_survive_a_round_trip_through_the_client_state_store(tmp_path):
    """Round 2 continues from the statistics saved after round 1. With lambda_u =
    lambda_e = 0 the mask cannot change training, so two round-2 runs from saved
    states that differ only in tau and p~ end exactly m^steps times that difference
    apart: the saved values carry on with the EMA's weight, nothing is reset."""
    m, steps = 0.9, 3
    cfg = resolve(overrides={"client.algorithm": "freematch", "client.local_steps": steps,
                             "client.batch_size": 4, "client.uratio": 1, "client.freematch.ema_p": m,
                             "client.freematch.lambda_u": 0.0, "client.freematch.lambda_e": 0.0})
    alg, data, store = build_algorithm(cfg), random_data(), ClientStateStore(tmp_path)
    model = build_model("cnn", 10)
    res1 = train_client(model, alg, data, cfg, server_round=1, partition_id=0, state=None)
    algo = {k: v for k, v in res1.state.items() if k.startswith("algo.")}
    assert set(algo) == {"algo.global_threshold", "algo.class_probs", "algo.label_hist"}
    assert algo["algo.class_probs"].sum().item() == pytest.approx(1.0)
    assert algo["algo.label_hist"].sum().item() == pytest.approx(1.0)
    assert 0.1 < algo["algo.global_threshold"].item() < 1, "moved from 1/C towards the batches' confidence"
    store.save(0, "run0", 1, res1.state)

    loaded = store.load(0, "run0", before_round=2)
    assert loaded is not None and loaded[0] == 1
    for k, v in algo.items():
        assert torch.equal(loaded[1][k], v.cpu())
    shifted = copy.deepcopy(loaded)
    shifted[1]["algo.global_threshold"] = shifted[1]["algo.global_threshold"] + 0.2
    shifted[1]["algo.class_probs"] = shifted[1]["algo.class_probs"] + torch.arange(10) / 100

    def round2(state):
        return train_client(copy.deepcopy(model), alg, data, cfg, server_round=2, partition_id=0, state=state)

    a, b = round2(loaded), round2(shifted)
    assert_close(b.state["algo.global_threshold"] - a.state["algo.global_threshold"],
                 torch.tensor(0.2 * m ** steps))
    assert_close(b.state["algo.class_probs"] - a.state["algo.class_probs"], torch.arange(10) / 100 * m ** steps)
    assert_close(b.state["algo.label_hist"], a.state["algo.label_hist"])


def test_a_client_with_labels_only_trains_without_thresholds():
    full = random_data()
    data = ClientData(full.x_l, full.y_l, full.x_u[:0], full.y_u[:0], flip=False)
    cfg = resolve(overrides={"client.algorithm": "freematch", "client.local_steps": 1, "client.batch_size": 4})
    res = train_client(build_model("cnn", 10), build_algorithm(cfg), data, cfg, server_round=1, partition_id=0,
                       state=None)
    assert res.metrics["train_loss_u"] == 0.0 and res.metrics["train_loss_x"] > 0
    assert not any(k.startswith("algo.") for k in res.state)


# -- a real Flower simulation, and the config ----------------------------------------
def test_freematch_runs_two_rounds_in_a_flower_simulation(tmp_path):
    from fedssl.simulation import run_experiment

    over = tiny(tmp_path, **{"client.algorithm": "freematch", "client.freematch.ema_p": 0.9,
                             "client.freematch.lambda_e": 0.01})
    res = run_experiment(resolve(overrides=over), quiet=True)
    assert res["status"] == "ok" and res["final"]["round"] == 2
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["round"] for r in rows] == ["1", "2"]
    for r in rows:
        assert 0.1 < float(r["train_global_threshold"]) < 1
        assert float(r["train_mask"]) > 0 and float(r["train_loss_f"]) != 0
    assert float(rows[1]["train_global_threshold"]) > float(rows[0]["train_global_threshold"]), \
        "each client's threshold carries over into round 2 and keeps rising from 1/C"
    assert "[client.freematch]\nema_p = 0.9\n" in (tmp_path / "config.toml").read_text()
    files = [p for *_, p in ClientStateStore(tmp_path / "client_state").files()]
    assert files, "no client state saved"
    from safetensors.torch import load_file

    assert "algo.global_threshold" in load_file(files[0])


def test_kill9_then_resume_keeps_each_clients_thresholds_exact(tmp_path):
    """Clients sampled in some rounds only: their thresholds come from the state saved
    when they last trained; kill -9 + --resume gives the uninterrupted run's rows."""
    from fedssl.simulation import run_experiment

    killed = tmp_path / "killed"
    over = tiny(killed, **{"client.algorithm": "freematch", "client.freematch.ema_p": 0.9,
                           "federation.rounds": 4, "run.checkpoint_every": 1, "data.num_clients": 3,
                           "federation.fraction_train": 0.67})
    kill9_after_checkpoint(over, killed)
    resumed = run_cli("run", "--resume", str(killed), "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run_experiment(resolve(overrides={**over, "run.out_dir": str(tmp_path / "straight")}), quiet=True)

    def timeless(out: Path) -> list[dict[str, str]]:
        with open(out / "metrics.csv") as f:
            return [{k: v for k, v in r.items() if not k.startswith(("wall_s", "round_s", "t_"))}
                    for r in csv.DictReader(f)]

    got, want = timeless(killed), timeless(tmp_path / "straight")
    assert [r["round"] for r in got] == ["1", "2", "3", "4"]
    assert got == want


def test_fedssl_config_shows_its_keys_set_by_flag():
    proc = run_cli("config", "--set", "client.algorithm='freematch'", "--set", "client.freematch.ema_p=0.99",
                   "--set", "client.freematch.use_quantile=true")
    assert proc.returncode == 0, proc.stderr
    section = proc.stdout.split("[client.freematch]\n", 1)[1]
    assert "\nema_p = 0.99\n" in section and "\nuse_quantile = true\n" in section
    assert "\nlambda_e = 0.001\n" in section and "\nclip_thresh = false\n" in section
    assert "# EMA momentum of the self-adaptive thresholds' statistics" in section


def test_its_keys_under_another_algorithm_are_one_line():
    proc = run_cli("config", "--set", "client.algorithm='fixmatch'", "--set", "client.freematch.ema_p=0.99")
    assert_bad_input(proc, "client.freematch.ema_p")
