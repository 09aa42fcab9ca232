"""The in-place weighted mean (fedssl.flower_compat) is Flower's, bit for bit, and
every mean-then-step strategy fed the mean aggregates exactly as when fed the replies."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy.fedopt import FedOpt
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from fedssl.flower_compat import MEAN_THEN_STEP, encode_state, mean_replies, server_reply, weighted_mean


def updates(n: int, seed: int) -> tuple[list[ArrayRecord], list[int]]:
    rng = np.random.default_rng(seed)
    recs = [ArrayRecord({"w": Array(rng.standard_normal((7, 5)).astype(np.float32)),
                         "b": Array(rng.standard_normal(5).astype(np.float32)),
                         "steps": Array(np.array(int(rng.integers(0, 100)), dtype=np.int64)),
                         "counts": Array(rng.integers(0, 9, size=3).astype(np.int64))})
            for _ in range(n)]
    return recs, [int(w) for w in rng.integers(1, 600, size=n)]


def contents(recs: list[ArrayRecord], weights: list[int]) -> list[RecordDict]:
    return [RecordDict({"arrays": r, "metrics": MetricRecord({"num-examples": w})}) for r, w in zip(recs, weights)]


def as_configured(s, arrays: ArrayRecord):
    """``current_arrays`` as the strategy's ``configure_train`` stores it."""
    if isinstance(s, FedOpt):
        return {k: arrays[k].numpy() for k in arrays.keys()}
    return ArrayRecord({k: arrays[k] for k in arrays.keys()})


@pytest.mark.parametrize("n", [1, 2, 13, 200])
def test_weighted_mean_is_flowers_bit_for_bit(n):
    recs, weights = updates(n, n)
    want = aggregate_arrayrecords(contents(recs, weights), "num-examples")
    got = weighted_mean(list(zip(recs, weights)), list(recs[0].keys()))
    assert list(got) == list(want.keys())
    for k in want.keys():
        w = want[k].numpy()
        assert got[k].dtype == w.dtype and got[k].shape == w.shape
        assert np.array_equal(np.asarray(got[k]), w), k


@pytest.mark.parametrize("cls", sorted(MEAN_THEN_STEP, key=lambda c: c.__name__))
def test_strategy_fed_the_mean_aggregates_as_fed_the_replies(cls):
    recs, weights = updates(9, 1)
    recs = [ArrayRecord({k: r[k] for k in ("w", "b")}) for r in recs]  # float layers only
    current = updates(1, 2)[0][0]
    current = ArrayRecord({k: current[k] for k in ("w", "b")})
    results = []
    for per_client in (True, False):
        s = cls()
        s.current_arrays = as_configured(s, current)
        for rnd in (1, 2):  # two rounds: momentum / moments carry over
            if per_client:
                replies = [server_reply(c, i, rnd) for i, c in enumerate(contents(recs, weights))]
            else:
                replies = mean_replies(list(zip(recs, weights)), ["w", "b"], "num-examples", rnd)
            arrays, _ = s.aggregate_train(rnd, replies)
            s.current_arrays = as_configured(s, arrays)
        results.append({k: arrays[k].numpy() for k in arrays.keys()})
    for k in results[0]:
        assert np.array_equal(results[0][k], results[1][k]), (cls.__name__, k)


def test_client_reply_arrays_have_np_saves_bytes():
    """The ClientApp's reply serialiser (a cached .npy header per layer) writes the
    bytes Flower's ``ArrayRecord(state_dict)`` writes, for every dtype and shape."""
    import torch

    from fedssl.models import build_model

    state = build_model("cnn", 10).state_dict()
    state.update({"steps": torch.tensor(7), "idx": torch.arange(6).reshape(2, 3),
                  "half": torch.ones(3, dtype=torch.float16), "view": torch.ones(4, 4).t()})
    want = ArrayRecord(state)
    for _ in range(2):  # the second time from the cached headers
        got = encode_state(state)
        assert list(got.keys()) == list(want.keys())
        for k in want.keys():
            assert (got[k].data, got[k].dtype, got[k].shape) == (want[k].data, want[k].dtype, want[k].shape), k
            assert np.array_equal(got[k].numpy(), state[k].numpy())
