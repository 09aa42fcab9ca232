"""A stateful strategy measures the clients' update against the model they received,
also when the server changed the aggregate before sending it (the labels-at-server
step): FedAvgM's momentum and FedOpt's moments against a hand computation, a user
strategy's hook, and a real simulation where clients change nothing."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import FedAvg

from fedssl.config import resolve
from fedssl.strategies.reference import set_reference
from fedssl.strategies.wrapper import FedSSLStrategy
from tests.conftest import tiny
from tests.test_strategies import (COUNTS, GLOBAL, _server_identity, aggregate, build, client_models,  # noqa: F401
                                   run_round, to_arrayrecord, update, weighted_mean)


def server_step(arrays: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """What the server's labeled step does to the aggregate, as far as the strategy can
    tell: it moves every weight (here by a fixed random displacement)."""
    rng = np.random.default_rng(seed)
    return {k: (v + rng.normal(scale=0.5, size=v.shape)).astype(np.float32) for k, v in arrays.items()}


def close(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5, err_msg=k)


def test_fedavgm_momentum_after_a_server_step_by_hand():
    lr, beta = 0.5, 0.9  # at lr 1 the reference cancels in round 2 and shows only from round 3
    strategy = build("fedavgm", server_lr=lr, server_momentum=beta)
    c1, c2 = client_models(seed=5), client_models(seed=6)

    a1 = run_round(strategy, 1, GLOBAL, c1, COUNTS)
    d1 = {k: GLOBAL[k] - weighted_mean(c1, COUNTS)[k] for k in GLOBAL}
    close(a1, {k: GLOBAL[k] - lr * d1[k] for k in GLOBAL})

    f1 = server_step(a1, seed=1)  # the clients of round 2 receive f1, not a1
    a2 = run_round(strategy, 2, f1, c2, COUNTS)
    d2 = {k: f1[k] - weighted_mean(c2, COUNTS)[k] for k in GLOBAL}  # against what they received
    close(a2, {k: f1[k] - lr * (beta * d1[k] + d2[k]) for k in GLOBAL})
    # against FedAvgM's own output a1, the server's step would come back in d2
    stale = {k: a1[k] - lr * (beta * d1[k] + a1[k] - weighted_mean(c2, COUNTS)[k]) for k in GLOBAL}
    assert max(np.abs(a2[k] - stale[k]).max() for k in GLOBAL) > 0.1


@pytest.mark.parametrize("name", ["fedavgm", "fedadam", "fedyogi", "fedadagrad"])
def test_no_client_change_keeps_the_fine_tuned_model(name):
    """Clients that return what they received move no reference-based strategy: the
    server's fine-tuned model goes out again unchanged, round after round."""
    strategy = build(name, server_momentum=0.9, eta=0.1)
    glob = GLOBAL
    for rnd in (1, 2, 3):
        glob = server_step(glob, seed=rnd)
        got = run_round(strategy, rnd, glob, [glob] * 3, COUNTS)
        for k in GLOBAL:
            # the mean of equal arrays is exact to 1 ulp, which FedOpt's adaptive step
            # scales up to about 1e-5; a stale reference is off by the step (~0.5)
            np.testing.assert_allclose(got[k], glob[k], rtol=0, atol=1e-4, err_msg=k)


def test_fedadam_moments_after_a_server_step_by_hand():
    eta, b1, b2, tau = 0.1, 0.9, 0.99, 1e-3
    strategy = build("fedadam", eta=eta, beta_1=b1, beta_2=b2, tau=tau)
    glob, m, v = GLOBAL, {k: 0.0 for k in GLOBAL}, {k: 0.0 for k in GLOBAL}
    for rnd, seed in ((1, 7), (2, 8)):
        glob = server_step(glob, seed=rnd)
        clients = client_models(seed)
        got = run_round(strategy, rnd, glob, clients, COUNTS)
        delta = {k: weighted_mean(clients, COUNTS)[k] - glob[k] for k in GLOBAL}
        m = {k: b1 * m[k] + (1 - b1) * delta[k] for k in GLOBAL}
        v = {k: b2 * v[k] + (1 - b2) * delta[k] ** 2 for k in GLOBAL}
        eta_t = eta * np.sqrt(1 - b2 ** (rnd + 1)) / (1 - b1 ** (rnd + 1))
        close(got, {k: glob[k] + eta_t * m[k] / (np.sqrt(v[k]) + tau) for k in GLOBAL})
        glob = got


class HookedAvg(FedAvg):
    """A user's strategy that keeps its reference under its own name."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.anchor: dict[str, np.ndarray] | None = None

    def set_reference(self, arrays: ArrayRecord) -> None:
        self.anchor = {k: arrays[k].numpy() for k in arrays}


def test_user_strategy_gets_the_sent_model_through_its_hook():
    strategy = FedSSLStrategy(HookedAvg(min_available_nodes=1, min_train_nodes=1), num_clients=3,
                              fraction_train=1.0, min_clients=1, seed=0)
    strategy.deployment = False
    sent = server_step(GLOBAL, seed=3)
    aggregate(strategy, 1, sent, [update(p, c, n) for p, (c, n) in enumerate(zip(client_models(1), COUNTS))])
    assert strategy.inner.anchor is not None
    for k in GLOBAL:
        np.testing.assert_array_equal(strategy.inner.anchor[k], sent[k])
    # a copy: changing the caller's record later does not reach the reference
    rec = to_arrayrecord(GLOBAL)
    set_reference(strategy.inner, rec)
    rec["w"].numpy()[...] = 7.0  # numpy() decodes a copy; the record's bytes are untouched
    assert not np.any(strategy.inner.anchor["w"] == 7.0)


def metrics(out: Path) -> list[dict[str, str]]:
    with open(out / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if not k.startswith(("wall_s", "round_s", "t_"))}
                for r in csv.DictReader(f)]


def test_server_only_under_global_momentum_equals_plain_averaging(tmp_path):
    """A real simulation: `supervised` clients without labels return the model they
    received, so only the server's step moves it. Global momentum 0.9 must then leave
    every fine-tuned model as it is: the run equals the same run under FedAvg."""
    from fedssl.simulation import run_experiment

    def run(name: str, **extra: object) -> list[dict[str, str]]:
        over = tiny(tmp_path / name, **{"data.server_labels_per_class": 10, "data.labeled_ratio": 0.0,
                                        "client.algorithm": "supervised", "federation.rounds": 3,
                                        "server.warmup_steps": 5, "server.train_steps": 10, **extra})
        run_experiment(resolve(overrides=over), quiet=True)
        return metrics(tmp_path / name)

    plain = run("fedavg", **{"server.strategy": "fedavg"})
    momentum = run("fedavgm", **{"server.strategy": "fedavgm", "server.server_momentum": 0.9})
    assert [r["round"] for r in plain] == ["1", "2", "3"]
    assert len({r["loss"] for r in plain}) > 1, "the server step must move the model"
    assert momentum == plain
