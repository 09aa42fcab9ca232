"""Open-world pieces: clustering, calibration, suppression weights, ORCA's loss terms,
FedoSSL's client with and without the server's centroids, and its strategy."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedssl.algorithms import Batch, RoundContext
from fedssl.registry import ALGORITHMS
from fedssl.config import ConfigError, own_keys_only, resolve
from fedssl.models import build_model
from fedssl.openworld import (adaptive_margin, anchor_seen_slots, balanced_kmeans, calibrate, calibrate_in_order,
                              entropy_of_mean,
                              margin_cross_entropy, mean_uncertainty, pairwise_bce,
                              pairwise_positives, sinkhorn_knopp, suppressed_loss,
                              suppression_weights)
from fedssl.training import ClientData, build_algorithm, train_client

K, S, D = 10, 6, 128


def unit(rows: int, dim: int, seed: int = 0) -> torch.Tensor:
    """``rows`` orthonormal directions in ``dim`` dimensions."""
    q, _ = torch.linalg.qr(torch.randn(dim, rows, generator=torch.Generator().manual_seed(seed)))
    return q.T.contiguous()


# -- clustering -------------------------------------------------------------------
def test_sinkhorn_balances_a_skewed_score_matrix():
    torch.manual_seed(0)
    scores = torch.randn(400, 8) * 0.1
    scores[:, 0] += 1.0  # raw argmax would put everything into cluster 0
    assert (scores.argmax(1) == 0).all()
    q = sinkhorn_knopp(scores, n_iters=50, epsilon=0.05)
    assert torch.allclose(q.sum(1), torch.ones(400), atol=1e-5)  # a distribution per sample
    assert torch.allclose(q.sum(0), torch.full((8,), 50.0), rtol=0.02)  # N / K per cluster
    hard = torch.bincount(q.argmax(1), minlength=8)
    assert hard.min() >= 30 and hard.max() <= 70


def test_sinkhorn_small_epsilon_does_not_overflow():
    q = sinkhorn_knopp(torch.tensor([[1.0, -1.0], [0.9, -1.0]]), epsilon=1e-3)
    assert torch.isfinite(q).all()
    assert torch.allclose(q.sum(1), torch.ones(2), atol=1e-5)


def test_balanced_kmeans_recovers_separated_clusters_in_equal_sizes():
    centers = unit(5, 32, seed=1)
    g = torch.Generator().manual_seed(2)
    truth = torch.arange(5).repeat_interleave(60)
    x = centers[truth] + 0.05 * torch.randn(300, 32, generator=g)
    centroids, assign = balanced_kmeans(x, 5, iters=10, seed=3)
    assert torch.allclose(centroids.norm(dim=1), torch.ones(5), atol=1e-5)
    for c in range(5):  # every true cluster is one found cluster, and vice versa
        assert len(torch.unique(assign[truth == c])) == 1
    assert len(torch.unique(assign)) == 5
    # deterministic in the seed
    again, _ = balanced_kmeans(x, 5, iters=10, seed=3)
    assert torch.equal(centroids, again)


def test_balanced_kmeans_with_fewer_points_than_clusters():
    centroids, assign = balanced_kmeans(torch.randn(3, 8), 5, iters=3, seed=0)
    assert centroids.shape == (5, 8) and torch.isfinite(centroids).all()


def test_calibration_maps_permuted_centroids_back_to_seen_class_ids():
    true = unit(K, D, seed=4)  # direction of class k
    perm = torch.randperm(K, generator=torch.Generator().manual_seed(5))
    shuffled = true[perm]  # the server's clustering returns them in any order
    noisy_means = (true[:S] + 0.1 * torch.randn(S, D, generator=torch.Generator().manual_seed(6))).numpy()
    out = calibrate(shuffled.numpy(), noisy_means, S)
    assert out.shape == (K, D) and out.dtype == np.float32
    np.testing.assert_allclose(out[:S], true[:S].numpy(), atol=1e-6)
    # the unseen slots hold exactly the other centroids (no reuse, none lost)
    rest = {int(np.argmax(true.numpy() @ v)) for v in out[S:]}
    assert rest == set(range(S, K))


def test_calibration_is_greedy_without_reuse_and_skips_unreported_classes():
    c = np.eye(4, dtype=np.float32)
    # classes 0 and 1 both resemble centroid 2 best; class 0 resembles it more
    means = np.array([[0, 0.2, 1.0, 0], [0.5, 0, 0.9, 0], [9, 9, 9, 9]], dtype=np.float32)
    out = calibrate(c, means, 3, valid=np.array([True, True, False]))
    np.testing.assert_array_equal(out[0], c[2])
    np.testing.assert_array_equal(out[1], c[0])  # the next best, since 2 is taken
    # class 2 was reported by nobody: its slot and slot 3 get the leftovers in order
    np.testing.assert_array_equal(out[2], c[1])
    np.testing.assert_array_equal(out[3], c[3])


def test_in_order_calibration_lets_earlier_classes_choose_first_where_greedy_takes_the_best_pair():
    """Centroid g0 is class 0's best (cos 0.90) and class 1's best (0.98); g1 is class 0's
    second (0.60), g2 class 1's second (0.60). Greedy takes the best pair first (class 1
    gets g0, class 0 then g1); the reference's order gives class 0 its best, g0, and
    class 1 its next best, g2. The leftover fills the unseen slot."""
    g = np.array([[0.9, 0.43589], [0.6, -0.8], [0.0, 1.0]], dtype=np.float32)
    means = np.array([[2.0, 0.0], [0.8, 0.6]], dtype=np.float32)  # unit-normed inside
    np.testing.assert_array_equal(calibrate_in_order(g, means, 2), g[[0, 2, 1]])
    np.testing.assert_array_equal(calibrate(g, means, 2), g[[1, 0, 2]])
    # where top-1 and top-2 are both taken (the reference's code fails), the best free one
    g4 = np.eye(4, dtype=np.float32)
    m3 = np.array([[0, 0, 1, 0], [0, 0, 0.9, 0.5], [0, 0, 0.9, 0.45]], dtype=np.float32)
    np.testing.assert_array_equal(calibrate_in_order(g4, m3, 3)[:3], g4[[2, 3, 0]])
    # a class nobody reported is skipped; its slot takes a leftover
    out = calibrate_in_order(g, means, 2, valid=np.array([False, True]))
    np.testing.assert_array_equal(out, g[[1, 0, 2]])


def test_anchored_seen_slots_are_the_class_means_and_unseen_slots_the_most_novel_centroids():
    # seen classes 0 and 1 (means e0, e1). Centroid 0 is class 0, centroid 3 a second
    # copy of it; centroid 1 has merged class 1 with a novel class; centroid 2 is novel
    c = np.array([[1, 0, 0, 0, 0], [0, 0.7, 0, 0.714, 0], [0, 0, 1, 0, 0], [0.9, 0, 0, 0, 0.436]],
                 dtype=np.float32)
    means = np.array([[3, 0, 0, 0, 0], [0, 2, 0, 0, 0]], dtype=np.float32)
    out = anchor_seen_slots(c, means, 2)
    np.testing.assert_allclose(out[:2], np.eye(5)[:2], atol=1e-7)  # the unit class means
    # max similarity to a class mean: 1, 0.7, 0, 0.9 -> the unseen slots get 1 and 2
    np.testing.assert_array_equal(out[2:], c[[1, 2]])
    # calibration hands class 1 the merged centroid and an unseen slot the copy of class 0
    np.testing.assert_array_equal(calibrate(c, means, 2)[1:], c[[1, 2, 3]])


def test_anchored_slots_of_unreported_classes_take_novel_centroids_in_order():
    c = np.eye(4, dtype=np.float32)
    means = np.array([[0, 0, 3, 0], [9, 9, 9, 9]], dtype=np.float32)
    out = anchor_seen_slots(c, means, 2, valid=np.array([True, False]))
    np.testing.assert_array_equal(out[0], c[2])  # the unit mean of class 0
    # novelty 0, 0, 1, 0: centroids 0, 1, 3 fill slot 1 (unreported) and the unseen slots
    np.testing.assert_array_equal(out[1:], c[[0, 1, 3]])
    np.testing.assert_array_equal(anchor_seen_slots(c, means, 2, valid=np.zeros(2, bool)), c)


def test_suppression_weights_follow_the_formula():
    counts = torch.tensor([100.0, 50.0, 0.0, 25.0])
    w = suppression_weights(counts, 0.2)
    expected = torch.tensor([0.2 ** 0.0, 0.2 ** 0.5, 0.2 ** 1.0, 0.2 ** 0.75])
    assert torch.allclose(w, expected)
    # weight grows with how often the class is predicted; a never-predicted class gets beta
    assert w[2] < w[3] < w[1] < w[0] == 1.0
    assert torch.equal(suppression_weights(torch.zeros(4), 0.2), torch.ones(4))


def test_suppressed_loss_is_the_references_weighted_l1_and_spares_rare_classes():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.5, 0.4], [0.3, 0.3, 0.4]])
    w = torch.tensor([1.0, 0.5, 0.2])
    # reference form: per sample, L1Loss(p, p with its top entry set to 1) * w[argmax]
    l1 = torch.nn.L1Loss()
    expected = []
    for p in probs:
        target = p.clone()
        target[p.argmax()] = 1.0
        expected.append(l1(p, target) * w[p.argmax()])
    assert suppressed_loss(probs, w) == pytest.approx(float(torch.stack(expected).mean()))
    # the same uncertainty costs less on a rarely predicted class (weight beta)
    frequent = suppressed_loss(torch.tensor([[0.6, 0.2, 0.2]]), w)
    rare = suppressed_loss(torch.tensor([[0.2, 0.2, 0.6]]), w)
    assert rare == pytest.approx(0.2 * frequent)
    assert suppressed_loss(torch.zeros(0, 3), w) == 0.0


# -- ORCA pieces --------------------------------------------------------------------
def test_adaptive_margin_is_minus_uncertainty_capped():
    assert adaptive_margin(0.2) == pytest.approx(-0.2)
    assert adaptive_margin(0.9) == pytest.approx(-0.5)
    probs = torch.tensor([[0.7, 0.3], [0.5, 0.5]])
    assert mean_uncertainty(probs) == pytest.approx(0.4)


def test_margin_cross_entropy_adds_the_margin_to_the_true_logit():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    y = torch.tensor([1, 2])
    shifted = logits.clone()
    shifted[0, 1] += 10 * 0.3
    shifted[1, 2] += 10 * 0.3
    assert margin_cross_entropy(logits, y, -0.3, 10.0) == pytest.approx(float(F.cross_entropy(shifted, y)))
    # a negative margin makes labeled samples easier (slows seen-class learning)
    assert margin_cross_entropy(logits, y, -0.3) < margin_cross_entropy(logits, y, 0.0)
    empty = margin_cross_entropy(torch.zeros(0, 3, requires_grad=True), torch.zeros(0, dtype=torch.long), -0.5)
    assert float(empty.detach()) == 0.0 and empty.requires_grad


def test_pairwise_positives_same_class_for_labeled_nearest_neighbour_for_unlabeled():
    torch.manual_seed(0)
    y_l = torch.tensor([0, 1, 0, 2, 0])
    feats = torch.randn(9, 4)
    # unlabeled rows 5..8: 5 and 7 are near-duplicates, 6 copies labeled row 3
    feats[7] = feats[5] + 1e-3
    feats[6] = feats[3] * 2  # same direction (cosine 1), different norm
    feats[8] = -feats[8]
    for _ in range(20):
        pos = pairwise_positives(feats, y_l)
        for i in (0, 2, 4):
            assert pos[i] in (0, 2, 4) and pos[i] != i
        assert pos[1] == 1 and pos[3] == 3  # only sample of its class: itself
        assert pos[5] == 7 and pos[7] == 5 and pos[6] == 3
        assert pos[8] != 8


def test_pairwise_bce_and_entropy_of_mean_on_known_batches():
    onehot = torch.eye(4)
    assert float(pairwise_bce(onehot, onehot)) == pytest.approx(0.0, abs=1e-6)
    assert float(pairwise_bce(onehot, onehot.roll(1, dims=0))) > 10  # disagreeing pairs
    uniform = torch.full((3, 4), 0.25)
    assert float(pairwise_bce(uniform, uniform)) == pytest.approx(math.log(4))
    assert float(entropy_of_mean(onehot)) == pytest.approx(math.log(4))  # spread over classes
    assert float(entropy_of_mean(onehot[[0, 0, 0]])) == pytest.approx(0.0, abs=1e-6)  # collapsed


# -- the algorithms on a real model ------------------------------------------------
def _cfg(algorithm: str, **over):
    return resolve(overrides=own_keys_only({"data.dataset": "synthetic", "data.partition": "openworld",
                              "data.seen_classes": S, "data.globally_unseen": 1,
                              "client.algorithm": algorithm, "client.orca.pretrain_rounds": 0,
                              "client.fedossl.pretrain_rounds": 0,
                              "client.batch_size": 8, "client.uratio": 2, "client.local_steps": 2,
                              "client.fedossl.memory_size": 64, "client.fedossl.local_centroids": 5,
                              "client.fedossl.pseudo_label_guard": "none", **over}))  # the reference's terms; guards have their own tests


def _data(n_l: int = 24, n_u: int = 48, seed: int = 0) -> ClientData:
    g = torch.Generator().manual_seed(seed)
    return ClientData(torch.randint(0, 256, (n_l, 1, 28, 28), dtype=torch.uint8, generator=g),
                      torch.arange(n_l) % S,
                      torch.randint(0, 256, (n_u, 1, 28, 28), dtype=torch.uint8, generator=g),
                      torch.arange(n_u) % K)


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("cnn", K, cosine_head=True)


def _batch(data: ClientData) -> Batch:
    from fedssl.data.augment import normalize, weak
    return Batch(x_l=[normalize(weak(data.x_l[:8])), normalize(weak(data.x_l[:8]))], y_l=data.y_l[:8],
                 x_u=[normalize(weak(data.x_u[:16])), normalize(weak(data.x_u[:16]))], y_u=data.y_u[:16])


def test_orca_is_open_world_with_two_weak_views():
    orca = ALGORITHMS["orca"]
    assert orca.open_world and orca.labeled_views == ("weak", "weak") == orca.unlabeled_views
    assert issubclass(ALGORITHMS["fedossl"], orca) and ALGORITHMS["fedossl"].open_world
    with pytest.raises(ConfigError, match="seen_classes"):
        resolve(overrides={"client.algorithm": "fedossl", "data.seen_classes": 0})


def test_orca_loss_is_ce_plus_pairwise_minus_entropy_with_the_round_margin():
    cfg = _cfg("orca")
    algo, model, data = build_algorithm(cfg), _model(), _data()
    ctx = RoundContext(server_round=1)
    algo.begin_round(model, ctx, data)
    u = float(ctx.state["uncertainty"])
    assert 0 < u < 1 and algo.margin(ctx) == pytest.approx(-min(u, 0.5))
    torch.manual_seed(1)
    loss, m = algo.loss(model, _batch(data), ctx)
    assert loss.requires_grad and math.isfinite(float(loss))
    assert float(loss) == pytest.approx(m["loss_x"] + m["loss_pair"] - m["entropy"], rel=1e-5)
    loss.backward()
    assert model.head.weight.grad.abs().sum() > 0


def test_orca_pretrain_rounds_train_plain_cross_entropy():
    cfg = _cfg("orca", **{"client.orca.pretrain_rounds": 1})
    algo, model, data = build_algorithm(cfg), _model(), _data()
    batch = _batch(data)
    ctx = RoundContext(server_round=1)
    loss, m = algo.loss(model, batch, ctx)
    assert set(m) == {"loss_x"}
    assert float(loss) == pytest.approx(float(F.cross_entropy(model(batch.x_l[0]), batch.y_l)), rel=1e-5)
    _, m2 = algo.loss(model, batch, RoundContext(server_round=2))
    assert {"loss_pair", "entropy"} <= set(m2)


def _global_centroids(model) -> np.ndarray:
    return F.normalize(model.head.weight.detach().T, dim=1).numpy()


def test_fedossl_without_payload_trains_like_orca_plus_suppression_and_reports_centroids():
    cfg = _cfg("fedossl", **{"client.fedossl.warmup_rounds": 1, "client.fedossl.pseudo_label_round": 1})
    algo, model, data = build_algorithm(cfg), _model(), _data()
    r1 = train_client(model, algo, data, cfg, server_round=1, partition_id=0, state=None, payload={})
    assert "train_loss_cluster" not in r1.metrics and "train_loss_sup" not in r1.metrics
    p = r1.payload
    assert p["local_centroids"].shape == (5, 128) and p["local_centroids"].dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(p["local_centroids"], axis=1), 1.0, atol=1e-5)
    assert p["class_means"].shape == (S, 128)
    np.testing.assert_array_equal(p["class_counts"], np.bincount(data.y_l.numpy(), minlength=S))
    counts = r1.state["algo.pred_counts"]
    assert counts.shape == (K,) and float(counts.sum()) == len(data.y_u)

    # round 2: N_k from round 1 is in the state -> the suppressed loss is on;
    # still no centroids (e.g. a stock FedAvg server) -> no centroid terms
    r2 = train_client(model, algo, data, cfg, server_round=2, partition_id=0, state=(1, r1.state), payload={})
    assert r2.metrics["train_loss_sup"] > 0
    assert "train_loss_cluster" not in r2.metrics and "train_loss_pl" not in r2.metrics


def test_fedossl_uses_global_centroids_from_warmup_and_pseudo_labels_later():
    cfg = _cfg("fedossl", **{"client.fedossl.warmup_rounds": 2, "client.fedossl.pseudo_label_round": 3,
                             "client.fedossl.threshold": 0.05})
    algo, model, data = build_algorithm(cfg), _model(), _data()
    payload = {"global_centroids": _global_centroids(model)}
    r1 = train_client(model, algo, data, cfg, server_round=1, partition_id=0, state=None, payload=payload)
    assert "train_loss_cluster" not in r1.metrics  # before warm-up ends
    r2 = train_client(model, algo, data, cfg, server_round=2, partition_id=0, state=(1, r1.state), payload=payload)
    assert r2.metrics["train_loss_cluster"] > 0 and "train_loss_pl" not in r2.metrics
    r3 = train_client(model, algo, data, cfg, server_round=3, partition_id=0, state=(2, r2.state), payload=payload)
    assert "train_loss_pl" in r3.metrics and r3.metrics["train_mask"] > 0


def test_fedossl_ratio_scales_the_pseudo_label_weight_by_unseen_over_seen_classes():
    """lambda_u_scale = "ratio": L_pl weighs lambda_u x min(1, unseen / seen); the round
    then equals one run at that weight with no scaling, loss for loss."""
    for seen, want in ((6, 0.5 * 4 / 6), (7, 0.5 * 3 / 7), (4, 0.5), (5, 0.5)):
        algo = build_algorithm(_cfg("fedossl", **{"data.seen_classes": seen, "client.fedossl.lambda_u_scale": "ratio"}))
        assert algo.pl_weight() == pytest.approx(want)
    assert build_algorithm(_cfg("fedossl", **{"data.seen_classes": 7})).pl_weight() == 0.5  # none: the default
    over = {"client.fedossl.warmup_rounds": 1, "client.fedossl.pseudo_label_round": 1, "client.fedossl.threshold": 0.05}
    losses = []
    for extra in ({"client.fedossl.lambda_u_scale": "ratio"}, {"client.fedossl.lambda_u": 0.5 * (K - S) / S}):
        cfg = _cfg("fedossl", **over, **extra)
        torch.manual_seed(0)
        model = _model()
        r = train_client(model, build_algorithm(cfg), _data(), cfg, server_round=1, partition_id=0, state=None,
                         payload={"global_centroids": _global_centroids(model)})
        losses.append((r.metrics["train_loss"], r.metrics["train_loss_pl"]))
    assert losses[0][1] > 0 and losses[0] == pytest.approx(losses[1])


def test_fedossl_unseen_slot_guard_drops_pseudo_labels_of_seen_slots():
    """Every sample's top centroid is seen slot 0: the reference pseudo-labels them
    all as class 0; with ``pseudo_label_slots = "unseen"`` none is pseudo-labelled."""
    from fedssl.data.augment import normalize
    data = _data()
    masks = {}
    for slots in ("all", "unseen"):
        cfg = _cfg("fedossl", **{"client.fedossl.warmup_rounds": 1, "client.fedossl.pseudo_label_round": 1,
                                 "client.fedossl.pseudo_label_slots": slots})
        algo, model = build_algorithm(cfg), _model()
        with torch.no_grad():
            z = F.normalize(model.features(normalize(data.x_u)), dim=1)
        toward = F.normalize(z.mean(0), dim=0)
        centroids = (-toward).repeat(K, 1)
        centroids[0] = toward
        r = train_client(model, algo, data, cfg, server_round=1, partition_id=0, state=None,
                         payload={"global_centroids": centroids.numpy()})
        masks[slots] = r.metrics["train_mask"]
    assert masks["all"] > 0.5 and masks["unseen"] == 0.0


def test_fedossl_ignores_malformed_centroids():
    cfg = _cfg("fedossl", **{"client.fedossl.warmup_rounds": 1})
    algo, model, data = build_algorithm(cfg), _model(), _data()
    for bad in (np.zeros((K, 7), np.float32), np.full((K, 128), np.nan, np.float32), np.zeros(3, np.float32)):
        r = train_client(model, algo, data, cfg, server_round=1, partition_id=0, state=None,
                         payload={"global_centroids": bad})
        assert "train_loss_cluster" not in r.metrics and math.isfinite(r.metrics["train_loss"])


def test_fedossl_pseudo_labels_follow_the_head_for_unseen_slots():
    cfg = _cfg("fedossl")
    algo, model = build_algorithm(cfg), _model()
    proto = F.normalize(model.head.weight.detach().T, dim=1)  # [K, D] class prototypes
    order = torch.tensor([0, 1, 2, 3, 4, 5, 9, 7, 6, 8])  # unseen slots scrambled
    ids = algo._pseudo_label_ids(model, proto[order])
    assert ids.tolist() == order.tolist()
    # the reference's mapping: slot k pseudo-labels as class k, whatever the head learnt
    algo = build_algorithm(_cfg("fedossl", **{"client.fedossl.slot_mapping": "slot_id"}))
    assert algo._pseudo_label_ids(model, proto[order]).tolist() == list(range(K))


# -- the strategy ------------------------------------------------------------------------
def _strategy(**over):
    from fedssl.strategies.fedossl import FedoSSL
    return FedoSSL.from_config(_cfg("fedossl", **{"server.strategy": "fedossl",
                                                  "server.fedossl_clustering": "kmeans", **over}))


def _payload(true: torch.Tensor, seed: int, classes=range(K)) -> dict[str, np.ndarray]:
    """Two local centroids near each class direction present, exact class means."""
    g = torch.Generator().manual_seed(seed)
    cls = torch.tensor(list(classes)).repeat_interleave(2)
    local = F.normalize(true[cls] + 0.05 * torch.randn(len(cls), D, generator=g), dim=1)
    counts = np.array([10.0 if c in classes else 0.0 for c in range(S)], np.float32)
    means = true[:S].numpy() * (counts[:, None] > 0)
    return {"local_centroids": local.numpy(), "class_means": means.astype(np.float32),
            "class_counts": counts}


def test_strategy_clusters_and_calibrates_centroids_from_payloads():
    strat = _strategy()
    assert strat.train_payload(1) == {}  # nothing before round 1's payloads
    true = unit(K, D, seed=7)
    strat.absorb_payloads(1, [(0, _payload(true, 0)), (1, _payload(true, 1, range(S + 2))),
                              (2, _payload(true, 2, [*range(S), 9]))])
    c = strat.train_payload(2)["global_centroids"]
    assert c.shape == (K, D) and c.dtype == np.float32
    cos = c @ true.numpy().T
    assert (np.diag(cos)[:S] > 0.95).all()  # slot c holds seen class c
    assert sorted(np.argmax(cos[S:], axis=1).tolist()) == list(range(S, K))  # every unseen class once
    state = strat.state_dict()
    fresh = _strategy()
    fresh.load_state_dict(state)
    np.testing.assert_array_equal(fresh.train_payload(3)["global_centroids"], c)


def test_strategy_skips_missing_or_malformed_payloads(caplog):
    strat = _strategy()
    true = unit(K, D, seed=8)
    good = _payload(true, 0)
    bad = {
        3: {k: v for k, v in good.items() if k != "class_means"},  # missing key
        4: {**good, "local_centroids": np.full((4, D), np.nan, np.float32)},  # non-finite
        5: {**good, "local_centroids": np.zeros((4, D + 1), np.float32),
            "class_means": np.zeros((S, D + 1), np.float32)},  # other feature dimension
        6: {**good, "class_means": good["class_means"][:2]},  # wrong number of classes
        7: {**good, "class_counts": -good["class_counts"]},  # negative counts
        8: {**good, "local_centroids": np.zeros(5, np.float32)},  # not a matrix
    }
    with caplog.at_level(logging.WARNING, logger="fedssl"):
        strat.absorb_payloads(1, [(0, good), (1, _payload(true, 1)), *bad.items()])
    skipped = [r.getMessage() for r in caplog.records if "payload skipped" in r.getMessage()]
    assert len(skipped) == len(bad)
    for pid in bad:
        assert any(f"client {pid}:" in msg for msg in skipped)
    c = strat.train_payload(2)["global_centroids"]
    assert np.isfinite(c).all() and (np.diag(c @ true.numpy().T)[:S] > 0.95).all()

    # a round with nothing usable keeps the previous centroids
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fedssl"):
        strat.absorb_payloads(2, [(3, bad[3])])
        strat.absorb_payloads(3, [])
    np.testing.assert_array_equal(strat.train_payload(4)["global_centroids"], c)
    assert any("no usable FedoSSL payload" in r.getMessage() for r in caplog.records)


def test_fedossl_ramp_scales_the_centroid_terms_by_the_servers_factors():
    """``fedossl_ramp`` = (a, b) scales L_cluster by a and L_pl by b, nothing else; a
    malformed one counts as (1, 1); a client with its own gates ignores it."""
    cfg = _cfg("fedossl", **{"client.fedossl.threshold": 0.05})
    algo, model, data = build_algorithm(cfg), _model(), _data()
    batch = _batch(data)
    totals, metrics = {}, {}
    for ramp in ((1.0, 1.0), (0.5, 0.25), (0.0, 0.0)):
        ctx = RoundContext(server_round=2, payload={"global_centroids": _global_centroids(model),
                                                     "fedossl_stage": np.array([2]),
                                                     "fedossl_ramp": np.array(ramp, np.float32)})
        algo.begin_round(model, ctx, data)
        torch.manual_seed(3)
        loss, m = algo.loss(model, batch, ctx)
        totals[ramp], metrics[ramp] = float(loss.detach()), m
    m = metrics[(1.0, 1.0)]
    assert m["loss_cluster"] > 0 and m["loss_pl"] > 0
    params = cfg.algo_params
    cut = lambda a, b: (1 - a) * params.lambda_cluster * m["loss_cluster"] + (1 - b) * params.lambda_u * m["loss_pl"]
    assert totals[(0.5, 0.25)] == pytest.approx(totals[(1.0, 1.0)] - cut(0.5, 0.25), rel=1e-5)
    assert totals[(0.0, 0.0)] == pytest.approx(totals[(1.0, 1.0)] - cut(0.0, 0.0), rel=1e-5)
    for bad in (np.array([0.5]), np.array([np.nan, 1.0]), np.zeros((2, 2))):
        assert algo.ramp(RoundContext(server_round=2, payload={"fedossl_ramp": bad})) == (1.0, 1.0)
    assert algo.ramp(RoundContext(server_round=2, payload={"fedossl_ramp": np.array([2.0, -1.0])})) == (1.0, 0.0)
    own = build_algorithm(_cfg("fedossl", **{"client.fedossl.pseudo_label_round": 3}))
    assert own.ramp(RoundContext(server_round=2, payload={"fedossl_ramp": np.array([0.2, 0.3])})) == (0.2, 1.0)


def test_fedossl_guards_against_relabelling_seen_samples():
    """Every sample's top centroid is ``top`` and the head predicts ``head_class`` for
    all of them. Seen slot 0, head unseen: ``keep_seen`` and ``no_seen_swap`` keep the
    pseudo-label (``agree`` does not). Seen slot 0, head seen 1 (a seen-to-seen swap):
    none does. Unseen slot, head seen 1: only ``no_seen_swap`` does. Without a guard,
    every case is pseudo-labelled."""
    from fedssl.data.augment import normalize
    data = _data()
    masks = {}
    for top, head_class in ((0, K - 1), (0, 1), (K - 1, 1)):
        for guard in ("none", "agree", "keep_seen", "no_seen_swap"):
            cfg = _cfg("fedossl", **{"client.fedossl.warmup_rounds": 1, "client.fedossl.pseudo_label_round": 1,
                                     "client.fedossl.pseudo_label_guard": guard, "client.local_steps": 1})
            algo, model = build_algorithm(cfg), _model()
            with torch.no_grad():
                z = F.normalize(model.features(normalize(data.x_u)), dim=1)
                toward = F.normalize(z.mean(0), dim=0)
                assert (z @ toward > 0).all()  # so the head below predicts head_class for all
                model.head.weight.copy_((-toward)[:, None].repeat(1, K))
                model.head.weight[:, head_class] = toward
            centroids = (-toward).repeat(K, 1)
            centroids[top] = toward
            r = train_client(model, algo, data, cfg, server_round=1, partition_id=0, state=None,
                             payload={"global_centroids": centroids.numpy()})
            masks[top, head_class, guard] = r.metrics["train_mask"]
    everything = {case: masks[(*case, "none")] for case in ((0, K - 1), (0, 1), (K - 1, 1))}
    assert min(everything.values()) > 0.5
    expected = {"agree": (0, 0, 0), "keep_seen": (1, 0, 0), "no_seen_swap": (1, 0, 1)}
    for guard, kept in expected.items():
        got = [masks[(*case, guard)] for case in everything]
        assert got == pytest.approx([k * everything[case] for k, case in zip(kept, everything)]), guard


def test_fedossl_prototype_guard_keeps_seen_samples_nearer_their_labels():
    """``prototype``: a move from seen class c into an unseen slot survives only when the
    sample is nearer the slot's centroid than c's labeled prototype; seen-to-seen swaps
    are dropped as by ``no_seen_swap``; a class without local labels does not block."""
    algo = build_algorithm(_cfg("fedossl", **{"client.fedossl.pseudo_label_guard": "prototype"}))
    e = torch.eye(4)
    algo._centroids = torch.zeros(K, 4)
    algo._centroids[K - 1] = e[0]                      # unseen slot K-1 points along e0
    algo._prototypes = torch.zeros(S, 4)
    algo._prototypes[1] = e[1]                          # seen class 1's labels along e1
    algo._has_prototype = torch.zeros(S, dtype=torch.bool)
    algo._has_prototype[1] = True
    z = torch.stack([
        3 * e[0] + e[1],   # head: seen 1, slot K-1; nearer the slot (0.95 vs 0.32): kept
        e[0] + 3 * e[1],   # head: seen 1, slot K-1; nearer class 1's labels: dropped
        e[0] + 3 * e[1],   # head: seen 2 (no local labels), slot K-1: kept
        e[0] + 3 * e[1],   # head: unseen K-2, slot K-1: kept
        e[0],              # head: seen 1, slot 3 (seen): a seen-to-seen swap, dropped
        e[1],              # head: seen 1, slot 1: agrees, kept
    ])
    pred = torch.tensor([1, 1, 2, K - 2, 1, 1])
    slot = torch.tensor([K - 1, K - 1, K - 1, K - 1, 3, 1])
    keep = algo._guard(pred, slot.clone(), slot, z)
    assert keep.tolist() == [True, False, True, True, False, True]
    plain = build_algorithm(_cfg("fedossl", **{"client.fedossl.pseudo_label_guard": "no_seen_swap"}))
    plain._centroids, plain._prototypes, plain._has_prototype = (
        algo._centroids, algo._prototypes, algo._has_prototype)  # the same cases, no prototype test
    assert plain._guard(pred, slot.clone(), slot, z).tolist() == [True, True, True, True, False, True]


def test_fedossl_prototype_guard_anchors_are_the_labeled_class_means():
    """begin_round fixes the prototypes for the round: the normalised mean feature of the
    client's labeled samples of each seen class, under the received model."""
    from fedssl.data.augment import normalize
    algo = build_algorithm(_cfg("fedossl", **{"client.fedossl.pseudo_label_guard": "prototype"}))
    model, data = _model(), _data()
    data = ClientData(data.x_l[data.y_l != 2], data.y_l[data.y_l != 2], data.x_u, data.y_u)  # no label of 2
    algo.begin_round(model, RoundContext(server_round=2, payload={"global_centroids": _global_centroids(model)}), data)
    with torch.no_grad():
        z = F.normalize(model.eval().features(normalize(data.x_l)), dim=1)
    for c in range(S):
        if c == 2:
            assert not algo._has_prototype[c]
            continue
        assert algo._has_prototype[c]
        torch.testing.assert_close(algo._prototypes[c], F.normalize(z[data.y_l == c].mean(0), dim=0))


def test_fedossl_forward_memory_clusters_the_rounds_training_features():
    """``client.fedossl.memory = "forward"``: the memory is the last ``memory_size`` normalised
    features of the round's training passes (both views), and the local centroids are
    fitted to it instead of to re-embedded samples."""
    out = {}
    for memory in ("reembed", "forward"):
        cfg = _cfg("fedossl", **{"client.fedossl.memory": memory, "client.fedossl.memory_size": 20, "client.local_steps": 3})
        algo, model, data = build_algorithm(cfg), _model(), _data()
        seen = []
        remember = algo._remember
        algo._remember = lambda z, seen=seen, remember=remember: (seen.append(z), remember(z))[1]
        torch.manual_seed(0)
        r = train_client(model, algo, data, cfg, server_round=1, partition_id=0, state=None, payload={})
        out[memory] = r.payload["local_centroids"]
        if memory == "forward":
            rows = 2 * (8 + 16)  # both views of 8 labeled + 16 unlabeled samples per step
            assert len(seen) == 3 and all(len(z) == rows for z in seen)
            assert algo._memory == []  # emptied once the centroids are fitted
        else:
            assert seen == []
    assert out["reembed"].shape == out["forward"].shape == (5, 128)
    assert not np.allclose(out["reembed"], out["forward"])


def test_fedossl_forward_memory_keeps_the_last_rows():
    algo = build_algorithm(_cfg("fedossl", **{"client.fedossl.memory": "forward", "client.fedossl.memory_size": 5}))
    algo._memory = []
    chunks = [torch.full((3, 4), float(i + 1)) for i in range(4)]
    for c in chunks:
        algo._remember(c)
    kept = torch.cat(algo._memory)[-5:]
    assert len(torch.cat(algo._memory)) >= 5 and len(algo._memory) == 2  # oldest chunks dropped
    torch.testing.assert_close(kept, F.normalize(torch.cat(chunks)[-5:], dim=1))
