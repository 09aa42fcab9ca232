"""FedoSSL's reference-style server clustering (fedssl/global_clustering.py) against
hand computations, and the strategy's clustering state across rounds and resumes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedssl.config import resolve
from fedssl.global_clustering import init_centroids, refine_centroids, sinkhorn_reference
from fedssl.openworld import balanced_kmeans
from tests.test_strategies import _server_identity, aggregate  # noqa: F401 (fixture)
from tests.test_strategies import update as reply

K, S, D = 4, 2, 8


def sknopp_transcribed(scores: np.ndarray, lamd: float = 25.0, max_iters: int = 100) -> np.ndarray:
    """The reference's sknopp, written out in its own [K, N] layout with numpy."""
    n, k = scores.shape
    e = np.exp(scores * lamd - (scores * lamd).max(axis=1, keepdims=True))
    probs = (e / e.sum(axis=1, keepdims=True)).T  # [K, N]
    r, c = np.ones((k, 1)) / k, np.ones((n, 1)) / n
    err = 1e3
    for it in range(max_iters):
        r = (1.0 / k) / (probs @ c)
        c_new = (1.0 / n) / (r.T @ probs).T
        if it % 10 == 0:
            err = np.nansum(np.abs(c / c_new - 1))
        c = c_new
        if err < 1e-2:
            break
    probs = probs * c.squeeze()
    probs = probs.T * r.squeeze()
    return probs * n


def test_sinkhorn_symmetric_case_by_hand():
    # softmax rows of [[1, 0], [0, 1]] / eps (eps = 1) are already balanced: r = 1, c = 1/2,
    # the loop stops at iteration 0 and Q = softmax itself.
    q = sinkhorn_reference(torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64), epsilon=1.0)
    a = math.e / (1 + math.e)
    np.testing.assert_allclose(q.numpy(), [[a, 1 - a], [1 - a, a]], rtol=1e-12)


def test_sinkhorn_matches_the_reference_form_and_balances():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(30, 5, generator=g, dtype=torch.float64) * 2 - 1
    q = sinkhorn_reference(scores)  # eps = 1/25
    np.testing.assert_allclose(q.numpy(), sknopp_transcribed(scores.numpy()), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(q.sum(dim=1).numpy(), 1.0, rtol=1e-9)  # rows exact
    np.testing.assert_allclose(q.sum(dim=0).numpy(), 30 / 5, rtol=0.05)  # columns balanced
    # softmax first differs from the former log-space version (no softmax) in general
    with pytest.raises(ValueError):
        sinkhorn_reference(torch.zeros(0, 3))


def test_one_sgd_step_of_the_reference_loss_by_hand():
    """2-D local centroids, 2 global centroids, 1 step: the finite-difference gradient of
    -mean cos(Q, softmax(Z C^T / T)) (Q fixed), plus weight decay, times lr, then row norm."""
    z = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
    c0 = np.array([[0.9, 0.1], [0.2, 0.7]])
    t, lr, wd = 0.1, 0.01, 1e-4
    q = sknopp_transcribed(z @ c0.T)

    def loss(c: np.ndarray) -> float:
        logits = (z / np.linalg.norm(z, axis=1, keepdims=True)) @ c.T / t
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        cos = (q * p).sum(1) / (np.linalg.norm(q, axis=1) * np.linalg.norm(p, axis=1))
        return -cos.mean()

    h, grad = 1e-6, np.zeros_like(c0)
    for i in np.ndindex(c0.shape):
        e = np.zeros_like(c0)
        e[i] = h
        grad[i] = (loss(c0 + e) - loss(c0 - e)) / (2 * h)
    assert np.abs(grad).max() > 1e-3  # the step is not a no-op
    want = c0 - lr * (grad + wd * c0)  # first momentum step: buffer = gradient
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    got = refine_centroids(c0, z, steps=1, lr=lr, weight_decay=wd, temperature=t)
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-9)


def test_refinement_separates_clean_clusters_and_is_deterministic():
    g = torch.Generator().manual_seed(1)
    true = torch.nn.functional.normalize(torch.randn(K, D, generator=g, dtype=torch.float64), dim=1)
    labels = np.tile(np.arange(K), 10)
    z = torch.nn.functional.normalize(true[labels] + 0.05 * torch.randn(len(labels), D, generator=g,
                                                                         dtype=torch.float64), dim=1).numpy()
    c = init_centroids(K, D, seed=3)
    for _ in range(2):
        c = refine_centroids(c, z, steps=300)
    slot = (z @ c.T).argmax(1)
    assert all(len(set(slot[labels == k])) == 1 for k in range(K))  # each class in one slot
    assert len(set(slot)) == K  # and no two classes share one
    np.testing.assert_array_equal(refine_centroids(c, z, steps=5), refine_centroids(c, z, steps=5))


def test_local_clustering_reference_variant_is_balanced_and_seeded():
    x = torch.nn.functional.normalize(torch.randn(64, D, generator=torch.Generator().manual_seed(2)), dim=1)
    c1, a1 = balanced_kmeans(x, 4, seed=5, epsilon=0.04, sinkhorn="reference", init="random")
    c2, a2 = balanced_kmeans(x, 4, seed=5, epsilon=0.04, sinkhorn="reference", init="random")
    assert torch.equal(c1, c2) and torch.equal(a1, a2)
    assert torch.bincount(a1, minlength=4).min() >= 8  # balanced: no cluster swallows the data


# -- the strategy --------------------------------------------------------------------
KS, SS, DS = 10, 6, 16  # the synthetic data set has 10 classes
def _strategy_cfg(**over):
    return resolve(overrides={"data.dataset": "synthetic", "data.partition": "openworld",
                              "data.seen_classes": SS, "data.globally_unseen": 1,
                              "client.algorithm": "fedossl", "server.strategy": "fedossl",
                              "server.fedossl_sgd_steps": 50, "federation.rounds": 40, **over})


def _strategy(**over):
    from fedssl.strategies.fedossl import FedoSSL
    return FedoSSL.from_config(_strategy_cfg(**over))


def _payloads(seed: int) -> list[tuple[int, dict[str, np.ndarray]]]:
    g = np.random.default_rng(seed)
    true = np.linalg.qr(np.random.default_rng(0).normal(size=(DS, KS)))[0].T
    out = []
    for pid in range(3):
        cls = np.repeat(np.arange(KS), 2)
        local = true[cls] + 0.05 * g.normal(size=(len(cls), DS))
        local /= np.linalg.norm(local, axis=1, keepdims=True)
        out.append((pid, {"local_centroids": local.astype(np.float32),
                          "class_means": true[:SS].astype(np.float32),
                          "class_counts": np.full(SS, 10.0, np.float32)}))
    return out


def test_strategy_keeps_and_resumes_persistent_centroids_exactly():
    strat = _strategy()
    strat.absorb_payloads(1, _payloads(1))
    first = strat.global_centroids.copy()
    state = strat.state_dict()
    assert isinstance(state["global_centroids"], np.ndarray)
    strat.absorb_payloads(2, _payloads(2))
    fresh = _strategy()
    fresh.load_state_dict(state)
    np.testing.assert_array_equal(fresh.global_centroids, first)
    fresh.absorb_payloads(2, _payloads(2))
    np.testing.assert_array_equal(fresh.global_centroids, strat.global_centroids)  # resumed exactly
    # persistent: round 2 refines round 1's calibrated centroids, it does not restart
    np.testing.assert_array_equal(
        strat.global_centroids,
        _refined_from(first, _payloads(2), strat))


def test_class_mean_seen_slots_persist_and_resume_exactly():
    from fedssl.openworld import anchor_seen_slots
    strat = _strategy(**{"server.fedossl_seen_slots": "class_mean"})
    strat.absorb_payloads(1, _payloads(1))
    first = strat.global_centroids.copy()
    means = _payloads(1)[0][1]["class_means"].astype(np.float64)
    np.testing.assert_allclose(first[:SS], means / np.linalg.norm(means, axis=1, keepdims=True), atol=1e-6)
    fresh = _strategy(**{"server.fedossl_seen_slots": "class_mean"})
    fresh.load_state_dict(strat.state_dict())
    strat.absorb_payloads(2, _payloads(2))
    fresh.absorb_payloads(2, _payloads(2))
    np.testing.assert_array_equal(fresh.global_centroids, strat.global_centroids)
    stack = np.concatenate([p["local_centroids"] for _, p in _payloads(2)]).astype(np.float64)
    expected = anchor_seen_slots(refine_centroids(first, stack, steps=50, epsilon=0.04), means, SS)
    np.testing.assert_array_equal(strat.global_centroids, expected.astype(np.float64))


def _refined_from(start, payloads, strat):
    from fedssl.openworld import calibrate
    stack = np.concatenate([p["local_centroids"] for _, p in payloads]).astype(np.float64)
    c = refine_centroids(start, stack, steps=50, epsilon=0.04)
    return calibrate(c, payloads[0][1]["class_means"], SS).astype(np.float64)


def test_kmeans_start_is_the_balanced_kmeans_of_the_first_stack_then_persists():
    from fedssl.openworld import calibrate, global_clustering
    from fedssl.seeding import derive_seed
    strat = _strategy(**{"server.fedossl_init": "kmeans", "server.fedossl_sgd_steps": 0})
    payloads = _payloads(1)
    strat.absorb_payloads(1, payloads)
    stack = np.concatenate([p["local_centroids"] for _, p in payloads]).astype(np.float64)
    start = global_clustering(stack, KS, seed=derive_seed(strat.seed, 0, "centroids"), epsilon=0.04,
                              sinkhorn="reference")
    start = start / np.linalg.norm(start, axis=1, keepdims=True)  # what 0 SGD steps leave
    np.testing.assert_allclose(strat.global_centroids,
                               calibrate(start, payloads[0][1]["class_means"], SS), atol=1e-6)  # float32 k-means
    # on clean clusters the start is already pure: every class its own slot
    slot = (stack @ strat.global_centroids.T).argmax(1)
    cls = np.tile(np.repeat(np.arange(KS), 2), 3)
    assert all(len(set(slot[cls == k])) == 1 for k in range(KS)) and len(set(slot)) == KS
    # persistent: round 2 continues from round 1's centroids (0 steps: unchanged), it does
    # not restart from a k-means of round 2's stack
    first = strat.global_centroids.copy()
    strat.absorb_payloads(2, _payloads(2))
    np.testing.assert_allclose(strat.global_centroids, first, atol=1e-12)


def test_strategy_round_gates_are_the_reference_fractions():
    strat = _strategy(**{"server.fedossl_gates": "run"})
    strat.absorb_payloads(1, _payloads(1))
    stages = [int(strat.train_payload(r)["fedossl_stage"][0]) for r in range(1, 41)]
    # reference (40 rounds, 0-based g): cluster loss when g > 4, pseudo-labels when g > 6
    assert stages == [0] * 5 + [1] * 2 + [2] * 33
    short = _strategy(**{"federation.rounds": 20, "server.fedossl_gates": "run"})
    short.absorb_payloads(1, _payloads(1))
    assert [int(short.train_payload(r)["fedossl_stage"][0]) for r in (3, 4, 5)] == [0, 1, 2]
    # 12 rounds, 3 of them the clients' warm start: counted over the whole run the
    # cluster loss is due in round 3, inside the warm start, so every term starts in
    # round 4 with ORCA's; after it, 9 rounds remain and the terms start once 1.125 and
    # 1.575 of them are done: in round 6 (2 done), after 2 rounds of ORCA alone
    kw = {"federation.rounds": 12, "client.fedossl.pretrain_rounds": 3}
    for gates, expected in (("run", [0, 0, 1, 2, 2, 2]), ("after_pretrain", [0, 0, 0, 0, 0, 2])):
        g = _strategy(**kw, **{"server.fedossl_gates": gates})
        g.absorb_payloads(1, _payloads(1))
        assert [int(g.train_payload(r)["fedossl_stage"][0]) for r in range(1, 7)] == expected
    assert _strategy(**kw).gate_offset == 3  # after_pretrain is the default


def test_strategy_ramp_is_a_sigmoid_from_each_gate():
    kw = {"federation.rounds": 12, "client.fedossl.pretrain_rounds": 3}
    off = _strategy(**kw, **{"server.fedossl_rampup": 0})  # rampup 0: full weight from the gate (round 6)
    assert [off.ramp(r).tolist() for r in (5, 6, 12)] == [[0, 0], [1, 1], [1, 1]]
    g = _strategy(**kw, **{"server.fedossl_rampup": 3})
    ramps = np.array([g.ramp(r) for r in range(1, 13)])
    expected = [0.0] * 5 + [np.exp(-5 * (2 / 3) ** 2), np.exp(-5 * (1 / 3) ** 2)] + [1.0] * 5
    np.testing.assert_allclose(ramps[:, 0], expected, rtol=1e-6)
    np.testing.assert_allclose(ramps[:, 1], expected, rtol=1e-6)  # both gates in round 6 here
    g.absorb_payloads(1, _payloads(1))
    np.testing.assert_allclose(g.train_payload(7)["fedossl_ramp"], ramps[6])
    # 40 rounds counted over the run: cluster loss from round 6, pseudo-labels from 8
    long = _strategy(**{"server.fedossl_gates": "run", "server.fedossl_rampup": 2})
    assert [round(float(long.ramp(r)[0]), 4) for r in (5, 6, 7)] == [0.0, round(float(np.exp(-1.25)), 4), 1.0]
    assert [round(float(long.ramp(r)[1]), 4) for r in (7, 8, 9)] == [0.0, round(float(np.exp(-1.25)), 4), 1.0]


def test_the_servers_strategy_is_built_with_every_fedossl_key():
    """``inner_strategy`` (what the ServerApp builds) and ``FedoSSL.from_config`` give the
    same strategy for non-default keys: a key one of them forgot would be silently off."""
    from fedssl.strategies import inner_strategy
    over = {"federation.rounds": 12, "client.fedossl.pretrain_rounds": 3, "server.fedossl_rampup": 2,
            "server.fedossl_init": "kmeans", "server.fedossl_seen_slots": "class_mean",
            "server.fedossl_weighting": "examples", "server.fedossl_sgd_steps": 7,
            "server.fedossl_cluster_start": 0.25, "server.fedossl_pseudo_label_start": 0.5}
    built, direct = inner_strategy(_strategy_cfg(**over)), _strategy(**over)
    for name in ("rampup", "gate_offset", "init", "seen_slots", "weighting", "sgd_steps", "cluster_start",
                 "pseudo_label_start", "num_rounds", "num_seen", "seed", "sinkhorn", "cluster_temperature"):
        assert getattr(built, name) == getattr(direct, name), name
    assert (built.rampup, built.gate_offset, built.sgd_steps) == (2, 3, 7)


def test_uniform_weighting_averages_clients_equally():
    g = {"w": np.zeros(3, np.float32)}

    def run(**over):
        replies = [reply(0, {"w": np.full(3, 0.0, np.float32)}, 1),
                   reply(1, {"w": np.full(3, 3.0, np.float32)}, 2)]
        return aggregate(_strategy(**over), 1, g, replies)

    np.testing.assert_allclose(run()["w"], 1.5)
    np.testing.assert_allclose(run(**{"server.fedossl_weighting": "examples"})["w"], 2.0)


@pytest.mark.parametrize("key, value", [("server.fedossl_clustering", "spectral"),
                                        ("server.fedossl_weighting", "median"),
                                        ("server.fedossl_cluster_start", 1.5),
                                        ("server.fedossl_sgd_steps", -1),
                                        ("client.fedossl.sinkhorn", "exact"),
                                        ("client.fedossl.sinkhorn_epsilon", 0.0),
                                        ("client.fedossl.pseudo_label_guard", "vote"),
                                        ("server.fedossl_init", "zeros"),
                                        ("server.fedossl_seen_slots", "median"),
                                        ("server.fedossl_gates", "late")])
def test_bad_fedossl_keys_are_config_errors(key, value):
    from fedssl.config import ConfigError
    with pytest.raises(ConfigError, match=key.rpartition(".")[2]):
        resolve(overrides={key: value, **({"client.algorithm": "fedossl", "data.seen_classes": 6}
                                          if key.startswith("client.") else {})})


@pytest.mark.parametrize("name, cells, methods", [
    ("openworld_robustness.toml", 360,  # (strategy, algorithm, guard, ramp-up)
     {("fedavg", "supervised", "none", 0), ("fedavg", "orca", "none", 0),
      ("fedossl", "fedossl", "none", 0), ("fedossl", "fedossl", "prototype", 3)}),
    ("openworld_robustness_small.toml", 72,  # (strategy, algorithm, slots, guard)
     {("fedavg", "supervised", "all", "none"), ("fedavg", "orca", "all", "none"),
      ("fedossl", "fedossl", "all", "none"), ("fedossl", "fedossl", "unseen", "none")}),
])
def test_robustness_grids_are_valid(tmp_path, name, cells, methods):
    from fedssl import bench
    from tests.conftest import ROOT
    g = bench.load_grid(ROOT / "benchmarks" / "grids" / name, tmp_path / "out")
    assert len(g.cells) == cells
    c = lambda cell: (cell.cfg.server.strategy, cell.cfg.client.algorithm)  # noqa: E731
    # FedoSSL's own keys; the other algorithms' cells leave them out ("none" / "all" in the grids' rows)
    fo = lambda cell, k, other: getattr(cell.cfg.algo_params, k, other)  # noqa: E731
    if name == "openworld_robustness.toml":
        got = {(*c(x), fo(x, "pseudo_label_guard", "none"), x.cfg.server.fedossl_rampup) for x in g.cells}
    else:
        got = {(*c(x), fo(x, "pseudo_label_slots", "all"), fo(x, "pseudo_label_guard", "none")) for x in g.cells}
    assert got == methods
    assert all(c.cfg.data.labeled_ratio == 0.5 and c.cfg.data.partition == "openworld" for c in g.cells)


def test_ablation_grid_is_valid_and_only_varies_fedossl_keys(tmp_path):
    from fedssl import bench
    from tests.conftest import ROOT
    g = bench.load_grid(ROOT / "benchmarks" / "grids" / "openworld_robustness_ablations.toml", tmp_path / "out")
    assert len(g.cells) == 54
    assert {(c.cfg.server.strategy, c.cfg.client.algorithm) for c in g.cells} == {("fedossl", "fedossl")}
    variants = {(c.cfg.algo_params.pseudo_label_round, c.cfg.server.fedossl_init, c.cfg.algo_params.pseudo_label_slots)
                for c in g.cells}
    assert variants == {(1000, "random", "all"), (0, "kmeans", "all"), (0, "kmeans", "unseen")}


def test_seen_slot_and_gate_grids_are_valid():
    from fedssl import bench
    from tests.conftest import ROOT
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        anchor, gates, held = (bench.load_grid(ROOT / "benchmarks" / "grids" / f"openworld_robustness_{name}.toml", f"{tmp}/{name}")
                               for name in ("anchor", "gates", "heldout"))
    assert len(anchor.cells) == 6 and {(c.cfg.server.fedossl_seen_slots, c.cfg.algo_params.pseudo_label_slots)
                                        for c in anchor.cells} == {("class_mean", "unseen")}
    assert len(gates.cells) == 18 and {c.cfg.server.fedossl_gates for c in gates.cells} == {"after_pretrain"}
    assert {c.cfg.run.seed for c in gates.cells} == {0, 1, 2}
    assert len(held.cells) == 36 and {c.cfg.run.seed for c in held.cells} == {3, 4}  # held out
    assert {(c.cfg.client.algorithm, c.cfg.server.fedossl_gates) for c in held.cells} == {
        ("orca", "run"), ("fedossl", "run"), ("fedossl", "after_pretrain")}
