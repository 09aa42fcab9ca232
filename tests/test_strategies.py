"""Server aggregation of each strategy against a hand computation on small arrays,
FedProx's client-side proximal step, and independence from packing order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import MetricRecord, RecordDict
from torch import nn

import strategies
from strategies.base import to_arrayrecord
from fedssl.algorithms import ALGORITHMS
from fedssl.config import resolve
from fedssl.training import ClientData, train_client

GLOBAL = {"w": np.array([[1.0, -2.0], [0.5, 0.0]], dtype=np.float32),
          "b": np.array([0.25, -1.0, 3.0], dtype=np.float32)}


def build(name: str, **server: object):
    cfg = resolve(overrides={"server.strategy": name, **{f"server.{k}": v for k, v in server.items()}})
    return strategies.build_strategy(cfg)


def update(pid: int, arrays: dict[str, np.ndarray], n: int) -> tuple[int, RecordDict]:
    return pid, RecordDict({"arrays": to_arrayrecord({k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()}),
                            "metrics": MetricRecord({"num-examples": n})})


def client_models(seed: int, k: int = 3) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{name: g + rng.normal(size=g.shape).astype(np.float32) for name, g in GLOBAL.items()}
            for _ in range(k)]


def run_round(strategy, rnd: int, global_arrays: dict[str, np.ndarray],
              clients: list[dict[str, np.ndarray]], counts: list[int]) -> dict[str, np.ndarray]:
    strategy.remember_global(to_arrayrecord(global_arrays))
    updates = [update(pid, arrays, n) for pid, (arrays, n) in enumerate(zip(clients, counts))]
    out = strategy.aggregate(rnd, updates, global_arrays)
    return {k: out[k].numpy() for k in global_arrays}


def weighted_mean(clients, counts) -> dict[str, np.ndarray]:
    total = sum(counts)
    return {k: sum(n * c[k].astype(np.float64) for c, n in zip(clients, counts)) / total for k in GLOBAL}


def assert_arrays_close(got: dict[str, np.ndarray], want: dict[str, np.ndarray], rtol=1e-5, atol=1e-6):
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=rtol, atol=atol, err_msg=k)


COUNTS = [10, 30, 60]


# -- FedAvg / FedProx aggregation ---------------------------------------------------
@pytest.mark.parametrize("name", ["fedavg", "fedprox"])
def test_fedavg_weights_by_num_examples(name):
    clients = client_models(seed=1)
    got = run_round(build(name), 1, GLOBAL, clients, COUNTS)
    assert_arrays_close(got, weighted_mean(clients, COUNTS))
    # the unweighted mean is measurably different, so the weights matter
    plain = {k: np.mean([c[k] for c in clients], axis=0) for k in GLOBAL}
    assert max(np.abs(got[k] - plain[k]).max() for k in GLOBAL) > 1e-2


def test_aggregate_keeps_integer_buffers_integer():
    glob = {**GLOBAL, "bn.num_batches_tracked": np.array(4, dtype=np.int64)}
    strategy = build("fedavg")
    strategy.remember_global(to_arrayrecord(glob))
    ups = [update(p, {**c, "bn.num_batches_tracked": np.array(6)}, n)
           for p, (c, n) in enumerate(zip(client_models(seed=2), COUNTS))]
    out = strategy.aggregate(1, ups, glob)
    assert out["bn.num_batches_tracked"].numpy().dtype == np.int64
    assert out["bn.num_batches_tracked"].numpy().shape == (), "0-d buffers stay 0-d"
    assert int(out["bn.num_batches_tracked"].numpy()) == 6
    assert out["w"].numpy().dtype == np.float32


@pytest.mark.parametrize("name", ["fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi"])
def test_result_does_not_depend_on_update_order(name):
    """Packing clients into messages differently reorders updates; the result must be
    bit-identical (floating-point sums are order-sensitive, so the mixin sorts)."""
    results = []
    for perm in ([0, 1, 2], [2, 0, 1], [1, 2, 0]):
        strategy = build(name)
        glob = GLOBAL
        for rnd, seed in ((1, 3), (2, 4)):  # two rounds: server state included
            clients = client_models(seed)
            strategy.remember_global(to_arrayrecord(glob))
            ups = [update(p, clients[p], COUNTS[p]) for p in perm]
            out = strategy.aggregate(rnd, ups, glob)
            glob = {k: out[k].numpy() for k in GLOBAL}
        results.append(glob)
    for other in results[1:]:
        for k in GLOBAL:
            np.testing.assert_array_equal(other[k], results[0][k])


# -- FedAvgM ------------------------------------------------------------------------
def test_fedavgm_server_momentum_over_two_rounds():
    lr, beta = 0.5, 0.9
    strategy = build("fedavgm", server_lr=lr, server_momentum=beta)
    c1, c2 = client_models(seed=5), client_models(seed=6)

    g1 = run_round(strategy, 1, GLOBAL, c1, COUNTS)
    d1 = {k: GLOBAL[k] - weighted_mean(c1, COUNTS)[k] for k in GLOBAL}  # pseudo-gradient
    want1 = {k: GLOBAL[k] - lr * d1[k] for k in GLOBAL}  # momentum starts at d1
    assert_arrays_close(g1, want1)

    g2 = run_round(strategy, 2, g1, c2, COUNTS)
    d2 = {k: g1[k] - weighted_mean(c2, COUNTS)[k] for k in GLOBAL}
    v2 = {k: beta * d1[k] + d2[k] for k in GLOBAL}
    assert_arrays_close(g2, {k: g1[k] - lr * v2[k] for k in GLOBAL})
    # without momentum the second step would differ
    assert max(np.abs(g2[k] - (g1[k] - lr * d2[k])).max() for k in GLOBAL) > 1e-2


# -- FedAdam / FedYogi --------------------------------------------------------------
ADAM = {"eta": 0.1, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3}


def test_fedadam_step_matches_formula():
    strategy = build("fedadam", **ADAM)
    eta, b1, b2, tau = ADAM["eta"], ADAM["beta_1"], ADAM["beta_2"], ADAM["tau"]
    glob, m, v = GLOBAL, {k: 0.0 for k in GLOBAL}, {k: 0.0 for k in GLOBAL}
    for rnd, seed in ((1, 7), (2, 8)):
        clients = client_models(seed)
        got = run_round(strategy, rnd, glob, clients, COUNTS)
        delta = {k: weighted_mean(clients, COUNTS)[k] - glob[k] for k in GLOBAL}
        m = {k: b1 * m[k] + (1 - b1) * delta[k] for k in GLOBAL}
        v = {k: b2 * v[k] + (1 - b2) * delta[k] ** 2 for k in GLOBAL}
        # Flower's bias correction counts steps as server_round + 1
        eta_t = eta * np.sqrt(1 - b2 ** (rnd + 1)) / (1 - b1 ** (rnd + 1))
        want = {k: glob[k] + eta_t * m[k] / (np.sqrt(v[k]) + tau) for k in GLOBAL}
        assert_arrays_close(got, want, rtol=1e-4, atol=1e-5)
        glob = got


def test_fedyogi_step_matches_formula():
    strategy = build("fedyogi", **ADAM)
    eta, b1, b2, tau = ADAM["eta"], ADAM["beta_1"], ADAM["beta_2"], ADAM["tau"]
    glob, m, v = GLOBAL, {k: 0.0 for k in GLOBAL}, {k: 0.0 for k in GLOBAL}
    for rnd, seed in ((1, 9), (2, 10)):
        clients = client_models(seed)
        got = run_round(strategy, rnd, glob, clients, COUNTS)
        delta = {k: weighted_mean(clients, COUNTS)[k] - glob[k] for k in GLOBAL}
        m = {k: b1 * m[k] + (1 - b1) * delta[k] for k in GLOBAL}
        v = {k: v[k] - (1 - b2) * delta[k] ** 2 * np.sign(v[k] - delta[k] ** 2) for k in GLOBAL}
        want = {k: glob[k] + eta * m[k] / (np.sqrt(v[k]) + tau) for k in GLOBAL}  # no bias correction
        assert_arrays_close(got, want, rtol=1e-4, atol=1e-5)
        glob = got


# -- FedProx on the client ----------------------------------------------------------
def test_fedprox_sends_mu_to_clients():
    assert build("fedprox", proximal_mu=0.3).client_config(1) == {"proximal-mu": 0.3}
    assert build("fedavg").client_config(1) == {}


def test_fedprox_client_step_adds_proximal_gradient():
    """With plain SGD the proximal term mu/2 ||w - w_global||^2 adds mu (w - w_global)
    to the gradient. It is zero at the first step (w = w_global); at the second step
    w2_prox = w2_plain - lr * mu * (w1 - w_global), since w1 and the batches are equal."""
    lr, mu = 0.1, 0.5
    cfg = resolve(overrides={"client.algorithm": "supervised", "client.lr": lr, "client.momentum": 0.0,
                             "client.weight_decay": 0.0, "client.batch_size": 4})
    g = torch.Generator().manual_seed(0)
    data = ClientData(torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8, generator=g),
                      torch.randint(0, 10, (8,), generator=g),
                      torch.zeros(0, 1, 28, 28, dtype=torch.uint8), torch.zeros(0, dtype=torch.long),
                      flip=False)
    torch.manual_seed(0)
    w0 = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10)).state_dict()

    def train(steps: int, mu_: float) -> dict[str, torch.Tensor]:
        model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
        model.load_state_dict(w0)
        c = cfg.replace(**{"client.local_steps": steps})
        train_client(model, ALGORITHMS["supervised"](c.client, 10, 10), data, c,
                     server_round=1, partition_id=0, state=None, proximal_mu=mu_)
        return model.state_dict()

    w1 = train(1, 0.0)
    torch.testing.assert_close(train(1, mu), w1)  # prox gradient is 0 at w_global
    plain, prox = train(2, 0.0), train(2, mu)
    for k in w0:
        torch.testing.assert_close(prox[k], plain[k] - lr * mu * (w1[k] - w0[k]))
    assert max((prox[k] - plain[k]).abs().max() for k in w0) > 1e-4


# -- update validation ----------------------------------------------------------------
@pytest.mark.parametrize("a", [
    np.arange(12, dtype=np.float32).reshape(3, 4), np.asfortranarray(np.arange(6.0).reshape(2, 3)),
    np.array(7, dtype=np.int64), np.zeros((0, 5), dtype=np.float16), np.arange(5, dtype=np.uint8)])
def test_decode_matches_numpy_load_on_first_and_cached_reads(a):
    from flwr.app import Array

    from strategies.validation import decode

    for _ in range(3):  # the first read parses the header, later ones reuse it
        arr = Array(a)
        got = decode(arr)
        assert got.dtype == a.dtype and got.shape == a.shape and np.array_equal(got, arr.numpy())
    if a.size:  # a cut payload fails as np.load fails, not silently
        truncated = Array(a)
        truncated.data = truncated.data[:-1]
        with pytest.raises(ValueError):
            decode(truncated)


def test_check_update_accepts_good_and_names_bad_updates():
    from strategies.validation import check_update

    _, good = update(0, GLOBAL, 10)
    assert check_update(good, GLOBAL, 10) is None
    _, big = update(0, GLOBAL, 11)
    assert "exceeds the partition size" in check_update(big, GLOBAL, 10)
    _, nan = update(0, {**GLOBAL, "b": np.array([0.0, np.nan, 1.0])}, 10)
    assert "non-finite" in check_update(nan, GLOBAL, 10)
    _, shape = update(0, {**GLOBAL, "b": np.zeros(4)}, 10)
    assert "has shape (4,)" in check_update(shape, GLOBAL, 10)
    _, cut = update(0, GLOBAL, 10)
    cut["arrays"]["w"].data = cut["arrays"]["w"].data[:-3]
    assert "cannot be decoded" in check_update(cut, GLOBAL, 10)
    _, far = update(0, {k: v + 10 for k, v in GLOBAL.items()}, 10)
    assert "exceeds server.max_update_norm" in check_update(far, GLOBAL, 10, max_update_norm=1.0)
