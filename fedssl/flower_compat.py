"""The one door to Flower 1.42's private behaviour.

The apps (server/, client/, strategies/) use Flower's public API (``flwr.app``,
``flwr.clientapp``, ``flwr.serverapp``, ``flwr.simulation``) and this module, never
Flower's private modules (an import-linter contract in pyproject.toml). What the apps
rely on beyond Flower's documented API, and why:

1. **The wire codec.** ``Array(ndarray).data`` holds ``np.save``'s .npy bytes. The
   ClientApp writes them by hand (:func:`encode_state`: one cached header per layer,
   one copy of the data) and the server reads them as zero-copy views
   (:func:`decode_array`: one header parse per layer, not per client): Flower's own
   ``np.save`` / ``np.load`` per array and client is most of a round's server time
   at a few hundred clients.
2. **Replies made on the server.** The wrapper hands the inner strategy one reply
   per virtual client, or one reply holding their weighted mean (3). Flower's public
   constructor derives a reply's metadata from the one instruction it answers, but a
   packed message answers for several clients and the mean for all of them, so
   :func:`server_reply` sets the metadata itself (``Message(metadata=...)``, which
   Flower marks internal), with the partition id as ``src_node_id``: FedoSSL orders
   and names the clients' payloads by it.
3. **Aggregation through the public verb, fed the mean.** ``Strategy.aggregate_train``
   (replies in, arrays out) is the only verb that reaches a strategy's server step
   (FedAvgM's momentum, FedOpt's moments); Flower has no verb that takes an aggregate.
   For the exact classes in :data:`MEAN_THEN_STEP`, whose ``aggregate_train`` is
   Flower's weighted mean (``aggregate_arrayrecords``) followed by a step on the mean
   alone, :func:`mean_replies` computes that mean in place with Flower's arithmetic
   (bit for bit) and passes it as one reply of the total weight: Flower's mean of one
   reply is the reply times 1.0, exact. So fedssl reads each update once, and the
   inner strategy's own verb still applies its step. Other classes (robust rules, q-FedAvg,
   FedoSSL, subclasses, users' classes) get one reply per client.
4. **A stand-in grid.** The wrapper samples nodes itself but wants the inner
   strategy's training config (FedProx's ``proximal-mu``, FedoSSL's payload), so it
   calls the inner ``configure_train`` with :class:`StandInGrid`, relying on Flower's
   strategies asking a grid only for ``get_node_ids`` and on FedAvg's messages
   sharing one RecordDict (FedoSSL adds its payload to the first).
5. **The simulation grid.** Flower's Simulation Engine drives a ServerApp through an
   ``InMemoryGrid`` (:func:`is_simulation_grid`); its reply poll period
   ``pull_interval`` (0.1 s) is lowered (:func:`poll_replies_every`).
6. **A runtime patch.** Flower's simulation threads (``vce_api``) wait on queues with
   ``timeout=1.0`` and look at the stop event only between waits, so unpatched, a run
   ends up to 1 s after its ServerApp returns. :func:`prompt_shutdown` makes ``vce_api``
   create :class:`PromptQueue` queues, whose timed waits last at most ``POLL_S``.
7. **Strategy attributes.** A server step is measured against ``current_arrays``
   (FedAvgM's and FedOpt's name; :mod:`fedssl.strategies.reference` sets it).

:func:`check` probes each of these against the installed Flower; tests/test_flower_compat.py
fails with its message when a newer Flower changes one.
"""

from __future__ import annotations

import inspect
import io
import logging
import math
import queue
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, cast

import flwr
import numpy as np
from flwr.app import (DEFAULT_TTL, Array, ArrayRecord, ConfigRecord, Message, MessageType, Metadata, MetricRecord,
                      RecordDict)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvg, FedAvgM, FedProx, FedYogi

FLOWER_LINE = "1.42"


class FlowerChanged(RuntimeError):
    """The installed Flower no longer behaves as fedssl relies on."""


# -- 1. the wire codec ---------------------------------------------------------------
_NPY_MAGIC = b"\x93NUMPY"
_READ: dict[bytes, tuple[np.dtype, tuple[int, ...], Literal["C", "F"]]] = {}  # .npy header -> layout
_WRITE: dict[tuple[str, tuple[int, ...]], bytes] = {}  # (dtype, shape) -> .npy header


def encode_state(state: dict[str, Any]) -> ArrayRecord:
    """``ArrayRecord(state)`` (a torch state dict or numpy arrays) with the same bytes,
    built without ``np.save`` per tensor: each (dtype, shape)'s header is made by
    ``np.save`` once per process and reused, the data appended in one copy."""
    out = {}
    for k, t in state.items():
        a = t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)
        if not a.flags.c_contiguous or a.dtype.hasobject:
            out[k] = Array(a)
            continue
        key = (a.dtype.str, a.shape)
        header = _WRITE.get(key)
        if header is None:
            full = Array(a).data
            header = _WRITE[key] = full[:len(full) - a.nbytes]
        out[k] = Array(dtype=str(a.dtype), shape=tuple(a.shape), stype="numpy.ndarray",
                       data=b"".join((header, a.reshape(-1).view(np.uint8).data)))
    return ArrayRecord(out)


def decode_array(arr: Array) -> np.ndarray:
    """``arr.numpy()``, read-only, without parsing the same .npy header for every
    client: a header is parsed by ``np.load`` the first time, then the data is read
    with ``np.frombuffer``. Anything unexpected goes through ``np.load`` and its errors."""
    data = arr.data
    if data[:6] == _NPY_MAGIC and len(data) >= 12:
        start = 10 if data[6] == 1 else 12
        end = start + int.from_bytes(data[8:start], "little")
        layout = _READ.get(bytes(data[:end]))
        if layout is not None:
            dtype, shape, order = layout
            if len(data) - end == dtype.itemsize * math.prod(shape):
                return np.frombuffer(data, dtype=dtype, offset=end).reshape(shape, order=order)
        a = arr.numpy()
        if len(_READ) < 4096 and not a.dtype.hasobject:
            mem: Literal["C", "F"] = "F" if a.flags.f_contiguous and not a.flags.c_contiguous else "C"
            _READ[bytes(data[:end])] = (a.dtype, a.shape, mem)
        return a
    return arr.numpy()


# -- 2. replies made on the server ---------------------------------------------------------
def server_reply(content: RecordDict, src: int, server_round: int) -> Message:
    """A training reply for the inner strategy, from ``src`` (a partition id), made
    outside the messaging runtime (see the module docstring, 2)."""
    metadata = Metadata(run_id=0, message_id="", src_node_id=src, dst_node_id=0, reply_to_message_id="",
                        group_id=str(server_round), created_at=0.0, ttl=DEFAULT_TTL,
                        message_type=MessageType.TRAIN)
    return Message(content=content, metadata=metadata)  # type: ignore[call-overload]


# -- 3. aggregation through the public verb, fed the mean ------------------------------------
#: Exact classes whose ``aggregate_train`` is Flower's weighted mean followed by a step
#: on the mean alone (none, FedAvgM's momentum, FedOpt's moments). Exact: a subclass
#: may read the replies itself.
MEAN_THEN_STEP: frozenset[type] = frozenset({FedAvg, FedProx, FedAvgM, FedAdam, FedYogi, FedAdagrad})


def takes_mean(strategy: object) -> bool:
    """True if ``strategy``'s ``aggregate_train`` may be fed the weighted mean as one reply."""
    return type(strategy) in MEAN_THEN_STEP


def weighted_mean(updates: Sequence[tuple[ArrayRecord, int | float]], keys: Sequence[str]
                  ) -> dict[str, np.ndarray]:
    """Flower's ``aggregate_arrayrecords`` over (arrays, weight) pairs, in their order:
    ``x * (w / total)`` added into a running sum that the first product starts, so the
    same rounding (float32 layers sum in float32, integer buffers in float64), with one
    preallocated buffer per layer and zero-copy reads."""
    weights = [w for _, w in updates]
    total = sum(weights)
    acc: dict[str, np.ndarray] = {}
    tmp: dict[str, np.ndarray] = {}
    for (arrays, _), w in zip(updates, weights):
        f = w / total
        for k in keys:
            x = decode_array(arrays[k])
            if k not in acc:
                acc[k] = x * f
                tmp[k] = np.empty_like(acc[k])
            else:
                np.multiply(x, f, out=tmp[k])
                acc[k] += tmp[k]
    return acc


def mean_replies(updates: Sequence[tuple[ArrayRecord, int | float]], keys: Sequence[str], weight_key: str,
                 server_round: int) -> list[Message]:
    """The one reply a :data:`MEAN_THEN_STEP` strategy aggregates: the weighted mean of
    ``updates`` under ``weight_key`` = their total weight."""
    mean = weighted_mean(updates, keys)
    content = RecordDict({"arrays": ArrayRecord({k: Array(np.asarray(v)) for k, v in mean.items()}),
                          "metrics": MetricRecord({weight_key: sum(w for _, w in updates)})})
    return [server_reply(content, 0, server_round)]


# -- 4. a stand-in grid ------------------------------------------------------------------------
class StandInGrid:
    """The grid an inner strategy's ``configure_train`` sees: it reports enough nodes
    for the strategy's sampling never to wait; everything else is the real grid's."""

    def __init__(self, grid: Any, strategy: object) -> None:
        self._grid = grid
        self._n = max(1, int(getattr(strategy, "min_available_nodes", 1) or 1),
                      int(getattr(strategy, "min_train_nodes", 1) or 1))

    def get_node_ids(self) -> list[int]:
        return list(range(1, self._n + 1))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def as_grid(grid: StandInGrid) -> Grid:
    """``grid`` typed as what a strategy's ``configure_train`` takes."""
    return cast(Grid, grid)


# -- 5. the simulation grid ------------------------------------------------------------------
def is_simulation_grid(grid: object) -> bool:
    """True under Flower's Simulation Engine (``run_simulation``, and ``flwr run`` on a
    simulation SuperLink); False under a real SuperLink, where each SuperNode owns one
    partition."""
    return any(c.__name__ == "InMemoryGrid" for c in type(grid).__mro__)


def poll_replies_every(grid: object, seconds: float) -> None:
    """Set a simulation grid's reply poll period (each round otherwise ends up to one
    period after its last reply arrived); other grids are left alone."""
    if is_simulation_grid(grid) and hasattr(grid, "pull_interval"):
        grid.pull_interval = seconds


# -- 6. the runtime patch --------------------------------------------------------------------
class PromptQueue(queue.Queue):
    """A queue whose timed waits last at most ``POLL_S``: Flower's simulation threads
    then notice the stop event within ``POLL_S``; an item put wakes a waiting thread
    at once either way, so message delivery is unchanged."""

    POLL_S = 0.05

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if block and timeout is not None:
            timeout = min(timeout, self.POLL_S)
        return super().get(block, timeout)


def prompt_shutdown() -> None:
    """Make Flower's simulation runtime create :class:`PromptQueue` queues."""
    from flwr.server.superlink.fleet.vce import vce_api

    if not isinstance(getattr(vce_api, "Queue", None), type):
        raise FlowerChanged(f"flwr {flwr.__version__}: flwr.server.superlink.fleet.vce.vce_api.Queue is gone; "
                            "fedssl.flower_compat.prompt_shutdown needs updating")
    vce_api.Queue = PromptQueue  # type: ignore[attr-defined,misc]


# -- the probes --------------------------------------------------------------------------------
def _probe_codec() -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    assert Array(a).data == buf.getvalue(), "Array(ndarray).data is no longer np.save's .npy bytes"
    rec = encode_state({"a": a, "n": np.array(7, dtype=np.int64)})
    assert rec["a"].data == Array(a).data, "Array(dtype=, shape=, stype=, data=) no longer keeps the bytes"
    assert np.array_equal(decode_array(rec["a"]), a) and np.array_equal(rec["n"].numpy(), 7)


def _probe_reply() -> None:
    msg = server_reply(RecordDict({"metrics": MetricRecord({"num-examples": 1})}), 5, 2)
    assert msg.metadata.src_node_id == 5 and not msg.has_error(), "Message(metadata=Metadata(...)) changed"


def _probe_mean_then_step() -> None:
    rng = np.random.default_rng(0)
    recs = [ArrayRecord({"w": Array(rng.standard_normal((3, 2)).astype(np.float32))}) for _ in range(3)]
    weights = [5, 1, 9]
    ref = ArrayRecord({"w": Array(rng.standard_normal((3, 2)).astype(np.float32))})
    for cls in MEAN_THEN_STEP:
        out = []
        for replies in ([server_reply(RecordDict({"arrays": r, "metrics": MetricRecord({"num-examples": w})}),
                                      i, 1) for i, (r, w) in enumerate(zip(recs, weights))],
                        mean_replies(list(zip(recs, weights)), ["w"], "num-examples", 1)):
            s = cls()
            held = getattr(s, "current_arrays", ArrayRecord())
            if held is None:  # the type its configure_train stores: FedOpt a dict, FedAvgM a record
                s.current_arrays = ref if isinstance(s, FedAvgM) else {"w": ref["w"].numpy()}
            arrays, _ = s.aggregate_train(1, replies)
            out.append(arrays["w"].numpy())
        assert np.array_equal(out[0], out[1]), f"{cls.__name__}.aggregate_train is no longer mean-then-step"


def _probe_stand_in_grid() -> None:
    from flwr.supercore.task_identity import TaskIdentity

    class Bare:  # a grid with nothing but the stand-in's node ids
        pass

    names = ("_run_id", "_node_id", "_task_id")
    unset = TaskIdentity._run_id is None  # Messages read the ServerApp's identity
    for name in names if unset else ():
        setattr(TaskIdentity, name, 0)
    try:
        s = FedAvg(min_train_nodes=2, min_available_nodes=2)
        msgs = list(s.configure_train(1, ArrayRecord(), ConfigRecord(), as_grid(StandInGrid(Bare(), s))))
    finally:
        for name in names if unset else ():
            setattr(TaskIdentity, name, None)
    assert len(msgs) == 2, "FedAvg.configure_train asks a grid for more than get_node_ids"
    assert msgs[0].content is msgs[1].content, "FedAvg's training messages no longer share one RecordDict"


def _probe_simulation_grid() -> None:
    from flwr.superlink.grid import InMemoryGrid

    assert "pull_interval" in inspect.signature(InMemoryGrid.__init__).parameters, "InMemoryGrid.pull_interval"
    assert is_simulation_grid(InMemoryGrid.__new__(InMemoryGrid)), "the simulation grid is no InMemoryGrid"


def _probe_vce_queue() -> None:
    from flwr.server.superlink.fleet.vce import vce_api

    q = getattr(vce_api, "Queue", None)
    assert isinstance(q, type) and issubclass(q, queue.Queue), "flwr.server.superlink.fleet.vce.vce_api.Queue"
    assert "Queue()" in inspect.getsource(vce_api), "vce_api no longer creates its queues by the name Queue"


def _probe_current_arrays() -> None:
    for cls in (FedAvgM, FedAdam, FedYogi, FedAdagrad):
        assert hasattr(cls(), "current_arrays"), f"{cls.__name__}.current_arrays"


#: What fedssl relies on (module docstring, numbered) -> its probe.
RELIED: dict[str, Callable[[], None]] = {
    "1. .npy wire codec": _probe_codec,
    "2. replies made on the server": _probe_reply,
    "3. mean-then-step strategies": _probe_mean_then_step,
    "4. stand-in grid": _probe_stand_in_grid,
    "5. InMemoryGrid": _probe_simulation_grid,
    "6. vce_api.Queue patch": _probe_vce_queue,
    "7. current_arrays": _probe_current_arrays,
}


def check(names: Iterable[str] | None = None) -> list[str]:
    """One line per relied-on behaviour the installed Flower breaks (empty: none)."""
    problems = []
    flwr_log = logging.getLogger("flwr")
    level = flwr_log.level
    flwr_log.setLevel(logging.ERROR)  # the probes' own aggregation rounds are not news
    try:
        for name in names or RELIED:
            try:
                RELIED[name]()
            except Exception as e:  # noqa: BLE001 - any failure of a probe is a change in Flower
                problems.append(f"{name}: {type(e).__name__}: {e}")
    finally:
        flwr_log.setLevel(level)
    return problems


def assert_compatible() -> None:
    """Raise :class:`FlowerChanged` naming every relied-on behaviour that changed."""
    problems = check()
    if problems:
        raise FlowerChanged(f"flwr {flwr.__version__} (fedssl relies on {FLOWER_LINE}'s internals) changed: "
                            + "; ".join(problems))
