"""Incremental FedSSL ([stream]) without a simulation: domains, stages, the client's
memory and its bound under every method, the continual-learning metrics, and the
LwF / EWC losses against TARGET's code on constructed inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from fedssl.algorithms.base import RoundContext
from fedssl.config import resolve
from fedssl.state import ClientStateStore
from fedssl.stream import metrics as M
from fedssl.stream.domains import DEFAULT_SEVERITY, SEVERITY, corrupt
from fedssl.stream.memory import StreamMemory
from fedssl.stream.stages import split_shard, stage_of_round, stage_shards
from tests.conftest import assert_bad_input, as_set_flags, run_cli, tiny


def _images(n: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 28, 28, 1), dtype=np.uint8)


@pytest.mark.parametrize("domain", sorted(SEVERITY))
def test_each_domain_is_deterministic_and_per_image(domain):
    x, idx = _images(), np.arange(100, 106)
    a = corrupt(x, domain, DEFAULT_SEVERITY[domain], seed=3, split=0, index=idx)
    b = corrupt(x, domain, DEFAULT_SEVERITY[domain], seed=3, split=0, index=idx)
    assert a.dtype == np.uint8 and a.shape == x.shape and np.array_equal(a, b)
    # an image's corruption does not depend on the images transformed with it
    part = corrupt(x[2:4], domain, DEFAULT_SEVERITY[domain], seed=3, split=0, index=idx[2:4])
    assert np.array_equal(part, a[2:4])
    if domain != "identity":
        assert not np.array_equal(a, x)
    if domain in ("gaussian_noise", "rotate"):  # random draws follow the seed
        other = corrupt(x, domain, 5, seed=4, split=0, index=idx)
        assert not np.array_equal(other, corrupt(x, domain, 5, seed=3, split=0, index=idx))


def test_config_names_every_domain():
    from fedssl.config import keys

    assert set(keys()["stream.domains"].choices) == set(SEVERITY) == set(DEFAULT_SEVERITY)


def test_domains_match_the_reference_formulas():
    x = _images(4)
    f = x.astype(np.float64) / 255
    assert np.array_equal(corrupt(x, "inverse", 1, seed=0, split=0, index=np.arange(4)), 255 - x)
    c = SEVERITY["contrast"][3]
    m = f.mean(axis=(1, 2), keepdims=True)
    want = (np.clip((f - m) * c + m, 0, 1) * 255).astype(np.uint8)
    assert np.array_equal(corrupt(x, "contrast", 4, seed=0, split=0, index=np.arange(4)), want)
    blur = ndimage.gaussian_filter(f[0, :, :, 0], sigma=2.0, mode="nearest", truncate=4.0)
    got = corrupt(x[:1], "gaussian_blur", 2, seed=0, split=0, index=np.arange(1))
    assert np.array_equal(got[0, :, :, 0], (np.clip(blur, 0, 1) * 255).astype(np.uint8))
    # rotation about the centre by +-0.4 rad (severity 2), bilinear, zero outside:
    # scipy's rotate of the same image by one of the two signs
    got = corrupt(x[:1], "rotate", 2, seed=0, split=0, index=np.arange(1))[0, :, :, 0].astype(int)
    outs = [(np.clip(ndimage.rotate(f[0, :, :, 0], s * np.degrees(0.4), reshape=False, order=1, mode="constant"),
                     0, 1) * 255).astype(int) for s in (-1, 1)]
    assert min(np.abs(got - o).max() for o in outs) <= 1  # float rounding at .5 of a grey level


def test_stages_are_disjoint_cover_the_shard_and_keep_the_label_skew():
    cfg = resolve(overrides=tiny("/tmp/unused", **{"data.partition": "dirichlet", "data.alpha": 0.5,
                                                  "federation.rounds": 6, "stream.stages": 3,
                                                  "stream.rounds_per_stage": 2}))
    from fedssl.data import cached_partition, load_dataset

    part = cached_partition(cfg.data, cfg.run.seed)
    y = load_dataset(cfg.data, cfg.run.seed).train_y
    stages = stage_shards(cfg)
    seen: set[int] = set()
    for pid, shard in enumerate(part.shards):
        parts = stages[pid]
        ids = [set(p.labeled) | set(p.unlabeled) for p in parts]
        assert sum(map(len, ids)) == len(set().union(*ids)) == len(shard)  # disjoint, complete
        assert not (set().union(*ids) & seen)  # no sample on two clients
        seen |= set().union(*ids)
        assert set().union(*(set(p.labeled) for p in parts)) == set(shard.labeled)  # labels stay labels
        whole = np.bincount(y[np.r_[shard.labeled, shard.unlabeled]], minlength=10)
        for p in parts:  # the client's class mix is the same in every stage (+-1 per class and split)
            counts = np.bincount(y[np.r_[p.labeled, p.unlabeled]], minlength=10)
            assert np.all(np.abs(counts - whole / 3) <= 2)
    assert split_shard(part.shards[0], y, 3, 0, 0)[1] == stages[0][1]  # deterministic
    assert [stage_of_round(cfg.stream, r) for r in range(1, 7)] == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("extra, needle", [
    ({"stream.domains": "rotate,snow"}, "snow"),
    ({"stream.buffer": -1}, "stream.buffer"),
    ({"data.partition": "openworld", "data.seen_classes": 5}, "openworld"),
    ({"stream.stages": 400, "stream.rounds_per_stage": 1, "federation.rounds": 400,
      "stream.domains": ",".join(["rotate"] * 400)}, "stream.stages=400"),
    ({"federation.rounds": 3}, "federation.rounds"),
])
def test_bad_stream_input_is_one_line(tmp_path, extra, needle):
    over = tiny(tmp_path / "o", **{"stream.stages": 2, "stream.rounds_per_stage": 2, "federation.rounds": 4,
                                   **extra})
    assert_bad_input(run_cli("run", *as_set_flags(over)), needle)


def test_reservoir_bound_and_persistence(tmp_path):
    mem = StreamMemory(stages=4)
    x = torch.arange(400, dtype=torch.uint8).reshape(100, 1, 2, 2)
    for stage in range(4):
        y = torch.full((100,), -1, dtype=torch.int64)
        y[:10] = stage
        assert mem.enter(stage, x, y, "reservoir", 30, {"w": torch.ones(2) * stage}, seed=0, partition_id=1)
        assert not mem.enter(stage, x, y, "reservoir", 30, None, seed=0, partition_id=1)  # once per stage
        assert len(mem.buf_y) == min(30, 100 * (stage + 1)) and mem.seen == 100 * (stage + 1)
    assert set(mem.buf_stage.tolist()) == {0, 1, 2, 3}  # reservoir: every stage represented
    assert torch.equal(mem.teacher["w"], torch.full((2,), 3.0))
    store = ClientStateStore(tmp_path)
    store.save(1, "run", 7, mem.to_state())
    back = StreamMemory.from_state(store.load(1, "run")[1], 4)
    assert torch.equal(back.buf_x, mem.buf_x) and torch.equal(back.buf_y, mem.buf_y)
    assert back.seen == mem.seen and back.stage == 3 and torch.equal(back.teacher["w"], mem.teacher["w"])
    lab_x, lab_y, _, _ = back.replay()
    assert len(lab_y) == int(((mem.buf_y >= 0) & (mem.buf_stage < 3)).sum())


@pytest.mark.parametrize("algorithm", ["supervised", "fixmatch", "replay", "retrain", "lwf", "ewc", "fedmobile"])
def test_buffer_bound_holds_under_every_method(tmp_path, algorithm):
    """Three stages of real local training through the client runtime: the buffer never
    exceeds stream.buffer (retrain keeps everything and says so)."""
    from fedssl.client.runtime import ClientRuntime

    cfg = resolve(overrides=tiny(tmp_path, **{"client.algorithm": algorithm, "federation.rounds": 3,
                                              "stream.stages": 3, "stream.rounds_per_stage": 1,
                                              "stream.buffer": 25, "client.local_steps": 2}))
    rt = ClientRuntime(cfg, {})
    state, reports = None, []
    for rnd, stage in ((1, 0), (2, 1), (3, 2)):
        res = rt.train(0, rnd, state, {}, 0.0, stage=stage)
        state = (rnd, res.state)
        reports.append(res.stream)
    sizes = [r["stream_buffer_samples"] for r in reports]
    stage_n = sum(len(p) for p in stage_shards(cfg)[0])
    if algorithm == "retrain":
        assert sizes[-1] == stage_n  # every sample received, unbounded, reported
    elif algorithm == "replay":
        assert sizes == [25, 25, 25]
    else:
        assert sizes == [0, 0, 0]
    assert all(r["stream_peak_bytes"] >= r["stream_memory_bytes"] > 0 for r in reports)
    # memory held: the stage's shard plus the buffer, each sample once (replayed entries
    # are in the training batches and in the buffer, and count once)
    shards = stage_shards(cfg)[0]
    assert [r["stream_memory_samples"] for r in reports] == [len(shards[s]) + sizes[s] for s in range(3)]
    assert [r["stream_stage"] for r in reports] == [0, 1, 2]
    has_teacher = any(k.startswith("stream.teacher.") for k in state[1])
    assert has_teacher == (algorithm in ("lwf", "ewc", "fedmobile"))
    if algorithm == "ewc":  # the first stage's Fisher is folded in when the client enters stage 1
        assert any(k.startswith("algo.fisher.") for k in state[1]) and int(state[1]["algo.merged"]) == 2


R = [[0.9, 0.2, 0.1], [0.6, 0.8, 0.3], [0.5, 0.7, 0.85]]
B = [0.1, 0.1, 0.1]


def test_metrics_against_a_hand_computed_matrix():
    got = M.summarize(R, B)
    assert got["final_avg_acc"] == pytest.approx((0.5 + 0.7 + 0.85) / 3)
    assert got["avg_incremental_acc"] == pytest.approx((0.9 + (0.6 + 0.8) / 2 + (0.5 + 0.7 + 0.85) / 3) / 3)
    assert got["forgetting"] == pytest.approx(((0.9 - 0.5) + (0.8 - 0.7)) / 2)
    assert got["bwt"] == pytest.approx(((0.5 - 0.9) + (0.7 - 0.8)) / 2)
    assert got["fwt"] == pytest.approx(((0.2 - 0.1) + (0.3 - 0.1)) / 2)
    # forgetting takes the best earlier accuracy, not the one right after learning
    assert M.forgetting(np.array([[0.5, 0.0], [0.3, 0.9]])) == pytest.approx(0.2)
    assert M.forgetting(np.array([[0.5, 0, 0], [0.7, 0.9, 0], [0.4, 0.9, 0.9]])) == pytest.approx(0.15)


def test_metrics_match_gem_confusion_matrix():
    """GEM's metrics/metrics.py (facebookresearch/GradientEpisodicMemory), restated:
    bwt = result[T-1] - diag, fwt[t] = result[t-1, t] - baseline[t], reported as
    ``.mean()`` over T tasks; the paper's (and ours) divide the same sums by T-1."""
    result, baseline = torch.tensor(R), torch.tensor(B)
    nt = 3
    acc = result.diag()
    bwt = result[nt - 1] - acc
    fwt = torch.zeros(nt)
    for t in range(1, nt):
        fwt[t] = result[t - 1, t] - baseline[t]
    got = M.summarize(R, B)
    assert got["bwt"] * (nt - 1) / nt == pytest.approx(float(bwt.mean()))
    assert got["fwt"] * (nt - 1) / nt == pytest.approx(float(fwt.mean()))
    assert got["final_avg_acc"] == pytest.approx(float(result[nt - 1].mean()))


def test_lwf_kd_and_ewc_match_target_on_constructed_inputs():
    from fedssl.algorithms.ewc import ewc_penalty, fisher_diagonal
    from fedssl.algorithms.lwf import kd_loss

    g = torch.Generator().manual_seed(0)
    pred, soft = torch.randn(5, 10, generator=g), torch.randn(5, 10, generator=g)
    # TARGET methods/lwf.py _KD_loss, restated
    ref = -1 * torch.mul(torch.softmax(soft / 2, dim=1), torch.log_softmax(pred / 2, dim=1)).sum() / pred.shape[0]
    assert float(kd_loss(pred, soft, 2.0)) == pytest.approx(float(ref), rel=1e-6)
    # a hand value: equal logits -> uniform soft targets -> KD = log(10)
    assert float(kd_loss(torch.zeros(2, 10), torch.zeros(2, 10), 2.0)) == pytest.approx(np.log(10))

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x, y = torch.randn(6, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    fisher = fisher_diagonal(model, x, y, batch_size=4, fisher_max=1e-4)
    # TARGET methods/ewc.py getFisherDiagonal, restated: sum of squared grads per batch / batches, clipped
    want = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for i in range(0, 6, 4):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x[i:i + 4]), y[i:i + 4]).backward()
        for n, p in model.named_parameters():
            want[n] += p.grad.pow(2)
    for n in want:
        assert torch.allclose(fisher[n], torch.clamp(want[n] / 2, max=1e-4))
    anchor = {n: p.detach() + 0.5 for n, p in model.named_parameters()}
    # compute_ewc: sum F (p - mean)^2 / 2 -> with p - mean = -0.5 everywhere, sum F / 8
    assert float(ewc_penalty(model, fisher, anchor).detach()) == pytest.approx(float(sum(f.sum() for f in fisher.values()) / 8))


def test_fedmobile_distribution_alignment_by_hand():
    from fedssl.algorithms.fedmobile import align

    q, prior = torch.tensor([[0.9, 0.1], [0.5, 0.5]]), torch.tensor([0.5, 0.5])
    # batch mean [0.7, 0.3]; q * prior / mean = [[.642857, .166667], [.357143, .833333]], rows renormalised
    want = torch.tensor([[0.642857 / 0.809524, 0.166667 / 0.809524], [0.3, 0.7]])
    assert torch.allclose(align(q, prior), want, atol=1e-5)
    # a teacher that files a whole batch under class 0 no longer yields one pseudo-label for all of it
    skewed = torch.softmax(torch.tensor([[4.0, 0.0, 1.0], [4.0, 1.0, 0.0], [4.0, 0.5, 0.5]]), dim=1)
    assert set(skewed.argmax(1).tolist()) == {0}
    assert set(align(skewed, torch.full((3,), 1 / 3)).argmax(1).tolist()) == {0, 1, 2}


def test_fedmobile_aligns_both_targets_only_when_asked(tmp_path):
    from fedssl.algorithms.fedmobile import FedMobileLike, FedMobileParams, align
    from fedssl.data.tensors import ClientData

    cfg = resolve(overrides=tiny(tmp_path)).client
    y_l = torch.tensor([0, 0, 0, 2])  # prior (3+1, 0+1, 1+1) / 7
    data = ClientData(torch.zeros(4, 1, 2, 2, dtype=torch.uint8), y_l, torch.zeros(0, 1, 2, 2), torch.zeros(0))
    q = torch.softmax(torch.randn(5, 3, generator=torch.Generator().manual_seed(0)), dim=1)
    for on in (True, False):
        alg = FedMobileLike(cfg, num_classes=3, num_seen=3, params=FedMobileParams(align=on))
        alg.begin_round(torch.nn.Identity(), RoundContext(server_round=1), data)
        assert torch.allclose(alg._prior, torch.tensor([4 / 7, 1 / 7, 2 / 7]))
        assert torch.equal(alg.targets(q), align(q, alg._prior) if on else q)
