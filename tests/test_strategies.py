"""Server aggregation of each strategy against a hand computation on small arrays,
FedProx's client-side proximal step, and independence from packing order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from torch import nn

from fedssl import strategies
from fedssl.registry import ALGORITHMS
from fedssl.config import ConfigError, resolve
from fedssl.training import ClientData, train_client
from fedssl.flower_compat import server_reply

GLOBAL = {"w": np.array([[1.0, -2.0], [0.5, 0.0]], dtype=np.float32),
          "b": np.array([0.25, -1.0, 3.0], dtype=np.float32)}


@pytest.fixture(autouse=True)
def _server_identity():
    """Messages read the ServerApp's run identity; give them one outside a run."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield


class Grid:
    """Three connected nodes (what configure_train asks of a grid)."""

    def get_node_ids(self) -> list[int]:
        return [11, 12, 13]


def to_arrayrecord(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v, order="C")) for k, v in arrays.items()})


def build(name: str, **server: object):
    cfg = resolve(overrides={"server.strategy": name, **{f"server.{k}": v for k, v in server.items()}})
    s = strategies.build_strategy(cfg)
    s.deployment = False
    return s


def update(pid: int, arrays: dict[str, np.ndarray], n: int) -> Message:
    """A client's unpacked reply (what any stock Flower server would get)."""
    # floats as float32 (the model's dtype); integer buffers keep theirs
    content = RecordDict({"arrays": to_arrayrecord({k: np.asarray(v) if np.issubdtype(np.asarray(v).dtype, np.integer)
                                                    else np.asarray(v, dtype=np.float32) for k, v in arrays.items()}),
                          "metrics": MetricRecord({"num-examples": n, "partition-id": pid})})
    return server_reply(content, 11 + pid, 1)


def client_models(seed: int, k: int = 3) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{name: g + rng.normal(size=g.shape).astype(np.float32) for name, g in GLOBAL.items()}
            for _ in range(k)]


def aggregate(strategy, rnd: int, global_arrays: dict[str, np.ndarray], replies: list[Message]):
    """One round through the Strategy verbs; the aggregated arrays as numpy."""
    strategy.configure_train(rnd, to_arrayrecord(global_arrays), ConfigRecord(), Grid())
    out, _ = strategy.aggregate_train(rnd, replies)
    return None if out is None else {k: out[k].numpy() for k in out}


def run_round(strategy, rnd: int, global_arrays: dict[str, np.ndarray],
              clients: list[dict[str, np.ndarray]], counts: list[int]) -> dict[str, np.ndarray]:
    replies = [update(pid, arrays, n) for pid, (arrays, n) in enumerate(zip(clients, counts))]
    return aggregate(strategy, rnd, global_arrays, replies)


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
    ups = [update(p, {**c, "bn.num_batches_tracked": np.array(6)}, n)
           for p, (c, n) in enumerate(zip(client_models(seed=2), COUNTS))]
    out = aggregate(strategy, 1, glob, ups)
    assert out["bn.num_batches_tracked"].dtype == np.int64
    assert out["bn.num_batches_tracked"].shape == (), "0-d buffers stay 0-d"
    assert int(out["bn.num_batches_tracked"]) == 6
    assert out["w"].dtype == np.float32


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
            ups = [update(p, clients[p], COUNTS[p]) for p in perm]
            glob = aggregate(strategy, rnd, glob, ups)
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
    """Flower's FedProx puts proximal-mu in its config; the wrapper forwards it."""
    def config(name, **kw):
        msgs = build(name, **kw).configure_train(1, to_arrayrecord(GLOBAL), ConfigRecord(), Grid())
        return [dict(m.content["config"]) for m in msgs]
    prox = config("fedprox", proximal_mu=0.3)
    assert len(prox) == 3 and all(c["proximal-mu"] == 0.3 for c in prox)
    assert sorted(p for c in prox for p in c["fedssl.pids"]) == list(range(20))  # every client once
    assert all("proximal-mu" not in c for c in config("fedavg"))


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
def test_check_update_accepts_good_and_names_bad_updates():
    from fedssl.strategies.validation import check_update

    good = update(0, GLOBAL, 10).content
    assert check_update(good, GLOBAL, 10) is None
    big = update(0, GLOBAL, 11).content
    assert "exceeds the partition size" in check_update(big, GLOBAL, 10)
    nan = update(0, {**GLOBAL, "b": np.array([0.0, np.nan, 1.0])}, 10).content
    assert "non-finite" in check_update(nan, GLOBAL, 10)
    shape = update(0, {**GLOBAL, "b": np.zeros(4)}, 10).content
    assert "has shape (4,)" in check_update(shape, GLOBAL, 10)
    cut = update(0, GLOBAL, 10).content
    cut["arrays"]["w"].data = cut["arrays"]["w"].data[:-3]
    assert "cannot be decoded" in check_update(cut, GLOBAL, 10)
    far = update(0, {k: v + 10 for k, v in GLOBAL.items()}, 10).content
    assert "exceeds server.max_update_norm" in check_update(far, GLOBAL, 10, max_update_norm=1.0)


def test_wrapper_rejects_bad_updates_with_a_reason_and_aggregates_the_rest(caplog):
    """A NaN update and one claiming more examples than its partition first reported
    are logged with one-line reasons and left out; the others are averaged."""
    strategy = build("fedavg")
    clients = client_models(seed=11)
    run_round(strategy, 1, GLOBAL, clients, COUNTS)  # sizes reported: 10, 30, 60
    bad_nan = {**clients[0], "b": np.array([0.0, np.nan, 1.0], np.float32)}
    with caplog.at_level("WARNING", logger="fedssl"):
        got = aggregate(strategy, 2, GLOBAL, [update(0, bad_nan, 10), update(1, clients[1], 31),
                                              update(2, clients[2], 60)])
    assert_arrays_close(got, clients[2])
    assert strategy.last_round["rejected_updates"] == 2 and strategy.last_round["clients"] == 1
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "client 0: update rejected: array 'b' holds non-finite values" in text
    assert "client 1: update rejected: num-examples 31 exceeds the partition size 30" in text


def test_wrapper_checkpoint_restores_flower_state_exactly():
    """FedAdam's moments live in Flower's class; the wrapper's state_dict carries them."""
    a, b = build("fedadam", **ADAM), build("fedadam", **ADAM)
    g1 = run_round(a, 1, GLOBAL, client_models(seed=12), COUNTS)
    b.load_state_dict(a.state_dict())
    c2 = client_models(seed=13)
    got, want = run_round(b, 2, g1, c2, COUNTS), run_round(a, 2, g1, c2, COUNTS)
    assert b.inner.m_t is not None and set(got) == set(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    fresh = build("fedadam", **ADAM)  # without the state, round 2 differs
    fresh_out = run_round(fresh, 2, g1, c2, COUNTS)
    assert any(not np.array_equal(fresh_out[k], want[k]) for k in want)


# -- every Flower strategy by name ----------------------------------------------------
def test_every_flower_strategy_is_registered_by_name():
    from flwr.serverapp import strategy as fs

    shipped = {n.lower() for n in fs.__all__ if n not in ("Result", "Strategy")
               and not n.startswith(("Differential", "FedXgb"))}
    assert shipped <= set(strategies.CLASSES)
    for name in strategies.CLASSES:
        inner = build(name).inner
        assert isinstance(inner, strategies.CLASSES[name])


def test_fedmedian_takes_the_coordinate_wise_median():
    clients = client_models(seed=14)
    got = run_round(build("fedmedian"), 1, GLOBAL, clients, COUNTS)
    assert_arrays_close(got, {k: np.median([c[k] for c in clients], axis=0) for k in GLOBAL})


def test_krum_picks_the_update_closest_to_its_neighbours():
    """With one far outlier, Krum (f=1) returns one of the two close updates, never the
    outlier and never an average."""
    base = client_models(seed=15, k=1)[0]
    close = [{k: v + 0.01 * i for k, v in base.items()} for i in (1, 2, 3)]
    far = {k: v + 50.0 for k, v in base.items()}
    got = run_round(build("krum", params="num_malicious_nodes = 1"), 1, GLOBAL, [*close, far],
                    [10, 10, 10, 10])
    assert any(all(np.array_equal(got[k], c[k]) for k in GLOBAL) for c in close)


def test_params_set_constructor_arguments_and_are_checked_against_the_signature():
    assert build("fedtrimmedavg", params="beta = 0.3").inner.beta == 0.3
    mk = build("multikrum", params="num_malicious_nodes = 1, num_nodes_to_select = 2").inner
    assert (mk.num_malicious_nodes, mk.num_nodes_to_select) == (1, 2)
    for params, needle in [("betta = 0.3", "FedTrimmedAvg has no parameter 'betta'"),
                           ("fraction_train = 0.5", "set federation.fraction_train"),
                           ("beta = 0.7", "`beta` must be in the range"),
                           ("beta", "expected 'name = value'"),
                           ("beta = abc", "is not a TOML value")]:
        with pytest.raises(ConfigError, match=".*") as e:
            build("fedtrimmedavg", params=params)
        assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_strategy_by_import_path(tmp_path, monkeypatch):
    (tmp_path / "userstrat.py").write_text(
        "from flwr.serverapp.strategy import FedAvg\n"
        "class Half(FedAvg):\n"
        "    def __init__(self, shrink: float = 1.0, **kw):\n"
        "        super().__init__(**kw)\n"
        "        self.shrink = shrink\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    s = build("userstrat:Half", params="shrink = 0.5")
    assert type(s.inner).__name__ == "Half" and s.inner.shrink == 0.5 and s.inner.min_train_nodes == 1
    for name, needle in [("userstrat:Nope", "cannot import 'userstrat:Nope'"),
                         ("nosuchmod:X", "cannot import 'nosuchmod:X'"),
                         ("json:JSONDecoder", "is not a flwr.serverapp.strategy.Strategy subclass")]:
        with pytest.raises(ConfigError) as e:
            build(name)
        assert needle in str(e.value), str(e.value)
