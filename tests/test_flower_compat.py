"""The door to Flower's private behaviour (fedssl.flower_compat): every relied-on name
and behaviour holds in the installed Flower, and a Flower that changes one fails the
check with a message naming it."""

from __future__ import annotations

import queue

import numpy as np
import pytest
from flwr.app import Array
from flwr.server.superlink.fleet.vce import vce_api
from flwr.serverapp.strategy import FedAvg, FedAvgM

from fedssl import flower_compat as fc


@pytest.mark.parametrize("name", list(fc.RELIED))
def test_installed_flower_behaves_as_relied_on(name):
    assert fc.check([name]) == []


def test_every_relied_on_behaviour_has_a_probe_and_the_whole_check_passes():
    assert len(fc.RELIED) == 7  # one per numbered item of the module docstring
    fc.assert_compatible()


def test_a_flower_without_the_patched_queue_fails_loudly_naming_it(monkeypatch):
    monkeypatch.delattr(vce_api, "Queue")
    problems = fc.check()
    assert len(problems) == 1 and problems[0].startswith("6. vce_api.Queue patch:"), problems
    assert "flwr.server.superlink.fleet.vce.vce_api.Queue" in problems[0]
    with pytest.raises(fc.FlowerChanged, match=r"changed: 6\. vce_api\.Queue patch: .*vce_api\.Queue"):
        fc.assert_compatible()
    with pytest.raises(fc.FlowerChanged, match="vce_api.Queue is gone"):
        fc.prompt_shutdown()  # the patch itself refuses to set a name Flower no longer reads


def test_a_strategy_that_stops_stepping_on_the_mean_alone_fails_the_check(monkeypatch):
    """FedAvgM that averages its reference into the result no longer equals itself fed
    the mean as one reply: the wrapper must not feed it the mean."""
    real = FedAvgM.aggregate_train

    def reads_replies(self, server_round, replies):
        replies = list(replies)
        arrays, metrics = real(self, server_round, replies)
        w = arrays["w"].numpy() + np.float32(len(replies))  # depends on the number of replies
        return type(arrays)({"w": Array(w)}), metrics

    monkeypatch.setattr(FedAvgM, "aggregate_train", reads_replies)
    problems = fc.check(["3. mean-then-step strategies"])
    assert problems and "FedAvgM.aggregate_train is no longer mean-then-step" in problems[0]


def test_the_stand_in_grid_probe_fails_when_sampling_asks_the_grid_for_more(monkeypatch):
    real = FedAvg.configure_train

    def asks_more(self, server_round, arrays, config, grid):
        grid.get_run_id()  # a grid method the stand-in does not answer (the bare grid has none)
        return real(self, server_round, arrays, config, grid)

    monkeypatch.setattr(FedAvg, "configure_train", asks_more)
    problems = fc.check(["4. stand-in grid"])
    assert problems and problems[0].startswith("4. stand-in grid: AttributeError")


def test_flowers_runtime_threads_wait_at_most_poll_s_on_their_queues(monkeypatch):
    """Flower's simulation threads wait on their queues with timeout=1.0 and look at
    the stop event only between waits. The patch caps each timed wait at
    PromptQueue.POLL_S; an item put is still handed over at once."""
    fc.prompt_shutdown()
    assert vce_api.Queue is fc.PromptQueue
    waits: list[float | None] = []
    real_get = queue.Queue.get

    def spy(self, block=True, timeout=None):
        waits.append(timeout)
        return real_get(self, block, timeout)

    monkeypatch.setattr(queue.Queue, "get", spy)
    q = fc.PromptQueue()
    with pytest.raises(queue.Empty):
        q.get(timeout=1.0)
    q.put("m")
    assert q.get(timeout=1.0) == "m"
    q.put("n")
    assert q.get() == "n"
    assert waits == [fc.PromptQueue.POLL_S, fc.PromptQueue.POLL_S, None]


@pytest.mark.parametrize("a", [
    np.arange(12, dtype=np.float32).reshape(3, 4), np.asfortranarray(np.arange(6.0).reshape(2, 3)),
    np.array(7, dtype=np.int64), np.zeros((0, 5), dtype=np.float16), np.arange(5, dtype=np.uint8)])
def test_decode_matches_numpy_load_on_first_and_cached_reads(a):
    for _ in range(3):  # the first read parses the header, later ones reuse it
        arr = Array(a)
        got = fc.decode_array(arr)
        assert got.dtype == a.dtype and got.shape == a.shape and np.array_equal(got, arr.numpy())
    if a.size:  # a cut payload fails as np.load fails, not silently
        truncated = Array(a)
        truncated.data = truncated.data[:-1]
        with pytest.raises(ValueError):
            fc.decode_array(truncated)


def test_simulation_grid_poll_period_is_set_only_on_a_simulation_grid():
    from flwr.superlink.grid import InMemoryGrid

    class Other:
        pull_interval = 0.1

    sim, other = InMemoryGrid.__new__(InMemoryGrid), Other()
    sim.pull_interval = 0.1
    fc.poll_replies_every(sim, 0.005)
    fc.poll_replies_every(other, 0.005)
    assert (sim.pull_interval, other.pull_interval) == (0.005, 0.1)
