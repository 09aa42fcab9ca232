"""What fedssl adds around any Flower strategy.

:class:`FedSSLStrategy` is itself a ``flwr.serverapp.strategy.Strategy`` that wraps
an *inner* one (FedAvg, FedProx, Krum, a user's class ...). The inner strategy keeps
its own bookkeeping (FedProx's ``proximal-mu``, FedOpt's moments, FedAvgM's momentum)
through its own ``configure_train`` / ``aggregate_train``; the wrapper adds:

- deterministic sampling of virtual clients from ``run.seed`` and the round, packed
  several to one message per simulated node; under a real SuperLink, one node = one
  partition (:mod:`fedssl.strategies.node_sampling`);
- validation of every client's update before the inner strategy sees it
  (:mod:`fedssl.strategies.validation`), with one-line rejection reasons in the log;
- the accepted updates for the inner ``aggregate_train``, sorted by partition id so
  that the result does not depend on the packing: their weighted mean as one reply
  for a mean-then-step strategy, else one reply per client
  (:mod:`fedssl.flower_compat`, 3, says why; :mod:`fedssl.strategies.replies`);
- the algorithm's payload records (e.g. FedoSSL's centroids) both ways, for inner
  strategies that ask for them (``config[WANT_PAYLOAD_KEY]``);
- the inner strategy's reference model set to the arrays sent this round, so that a
  server step after aggregation reaches FedAvgM's momentum and FedOpt's moments
  (:mod:`fedssl.strategies.reference`);
- what the clients report about themselves: partition sizes (from ``num-examples``)
  and which classes their shards hold (evaluation bookkeeping of the open world).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedssl import protocol as P
from fedssl.flower_compat import StandInGrid, as_grid, is_simulation_grid, mean_replies, takes_mean
from fedssl.strategies.node_sampling import NodeSampler
from fedssl.strategies.reference import set_reference
from fedssl.strategies.replies import Tally, client_replies, iter_updates, numeric
from fedssl.strategies.validation import check_update

log = logging.getLogger("fedssl")


class FedSSLStrategy(Strategy):
    """Sampling, packing, validation and payloads around ``inner``.

    Parameters
    ----------
    inner : Strategy
        The Flower strategy that aggregates (its ``configure_train`` config and
        records go to every sampled node; its ``aggregate_train`` gets the accepted
        updates). Its own node sampling is not used.
    num_clients : int
        Virtual clients (partitions) in the federation; a reply naming another
        partition id is rejected.
    fraction_train : float
        Share of the clients (simulation) or nodes (deployment) sampled each round.
    min_clients : int
        At least this many clients or nodes are sampled each round; a deployment
        waits for this many nodes before its first round.
    seed : int
        The run's seed: the sample of a round depends only on it and the round.
    max_update_norm : float (default: 0.0)
        An update farther than this L2 distance from the global model is rejected;
        0 turns the check off.
    clients_per_node : int (default: 0)
        Virtual clients packed into one simulation message; 0 picks a count from the
        CPUs, ``num_cpus`` and ``model_bytes``.
    num_cpus : float (default: 1.0)
        CPUs each simulated client takes.
    round_timeout : float (default: 600.0)
        Seconds to wait for nodes to connect (a node that does not reply within the
        round's timeout is counted as failed).
    model_bytes : int (default: 0)
        Size of the model's weights in bytes, for the automatic packing.
    deployment : bool | None (default: None)
        True under a real SuperLink (each node trains its own partition), False under
        the Simulation Engine; None decides from the grid in the first round.
    """

    def __init__(self, inner: Strategy, *, num_clients: int, fraction_train: float, min_clients: int,
                 seed: int, max_update_norm: float = 0.0, clients_per_node: int = 0,
                 num_cpus: float = 1.0, round_timeout: float = 600.0, model_bytes: int = 0,
                 deployment: bool | None = None) -> None:
        self.inner = inner
        self.num_clients, self.max_update_norm, self.round_timeout = num_clients, max_update_norm, round_timeout
        self.sampler = NodeSampler(num_clients, fraction_train, min_clients, seed, clients_per_node, num_cpus,
                                   round_timeout, model_bytes)
        self.deployment = deployment
        self.sizes: dict[int, int] = {}  # partition id -> num-examples it first reported
        self.classes: dict[int, tuple[int, ...]] = {}  # partition id -> classes its shard holds
        self.node_pid: dict[int, int] = {}  # deployment: partition id each node last reported
        self.last_round: dict[str, Any] = {}
        self._global: dict[str, np.ndarray] = {}
        self._sent: list[tuple[Message, list[int]]] = []
        self._want_payload = False

    # -- Strategy verbs ------------------------------------------------------------
    def summary(self) -> None:
        log.info("fedssl sampling/packing/validation around %s", type(self.inner).__name__)
        self.inner.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        if self.deployment is None:
            self.deployment = not is_simulation_grid(grid)
        self._global = {k: arrays[k].numpy() for k in arrays}
        set_reference(self.inner, arrays)  # after a server step too, the clients' starting point
        template = self._inner_content(server_round, arrays, config, grid)
        inner_config = template.get("config", ConfigRecord())
        self._want_payload = bool(inner_config.get(P.WANT_PAYLOAD_KEY, False))
        if self.deployment:
            node_ids = self.sampler.deployment(server_round, grid)
            # groups only name the partition each node reported before (logging)
            groups = [[self.node_pid[n]] if n in self.node_pid else [] for n in node_ids]
        else:
            node_ids, groups = self.sampler.simulation(server_round, grid)
        messages = []
        for node, group in zip(node_ids, groups):
            content = RecordDict({k: v for k, v in template.items() if k != "config"})
            rec = ConfigRecord(dict(inner_config))
            if not self.deployment:  # a SuperNode trains its own partition-id instead
                rec[P.PIDS_KEY] = list(group)
            content["config"] = rec
            messages.append(Message(content=content, dst_node_id=node, message_type=MessageType.TRAIN))
        self._sent = list(zip(messages, groups))
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message],
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        t0 = time.perf_counter()
        updates, info = self._collect(server_round, list(replies))
        info["t_validate_s"] = time.perf_counter() - t0  # unpacking and checking every update
        if not updates:
            self.last_round = info
            return None, MetricRecord(numeric(info))
        t0 = time.perf_counter()
        arrays, _ = self.inner.aggregate_train(server_round, self._inner_input(server_round, updates))
        info["t_aggregate_s"] = time.perf_counter() - t0
        self.last_round = info
        if arrays is None:
            return None, MetricRecord(numeric(info))
        # Flower's averages come back in float; integer buffers get their dtype back,
        # and the arrays come back in the global model's key order.
        out = ArrayRecord({k: Array(_cast(arrays[k].numpy(), ref.dtype)) for k, ref in self._global.items()})
        return out, MetricRecord(numeric(info))

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return []  # fedssl evaluates centrally on the test split (server/loop.py)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies) if replies else None

    # -- training messages -----------------------------------------------------------
    def _inner_content(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                       grid: Grid) -> RecordDict:
        """The records the inner strategy would send this round (its config entries,
        e.g. FedProx's ``proximal-mu``, and any extra records such as a payload)."""
        msgs = list(self.inner.configure_train(server_round, arrays, ConfigRecord(dict(config)),
                                               as_grid(StandInGrid(grid, self.inner))))
        if msgs:
            return msgs[0].content
        log.warning("round %d: %s sampled no node; sending its config unchanged", server_round,
                    type(self.inner).__name__)
        return RecordDict({"arrays": arrays, "config": ConfigRecord({**dict(config),
                                                                     P.SERVER_ROUND: server_round})})

    # -- replies -----------------------------------------------------------------------
    def _collect(self, rnd: int, replies: list[Message]) -> tuple[list[tuple[int, RecordDict]], dict]:
        """Accepted (pid, {'arrays', 'metrics', 'payload'?}) per virtual client, and the
        round's counts: rejected/failed clients, mean train_* and t_* metrics."""
        group_of = {m.metadata.dst_node_id: g for m, g in self._sent}
        # A reply names the node it answers for by the message it replies to: error
        # replies made by the SuperLink itself carry the SuperLink's id as src_node_id.
        dst_of = {m.metadata.message_id: m.metadata.dst_node_id for m, _ in self._sent if m.metadata.message_id}
        tally = Tally(messages=len(self._sent))
        answered: set[int] = set()
        seen: dict[int, int] = {}  # deployment: partition id -> node that sent it this round
        for reply in replies:
            node = dst_of.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
            answered.add(node)
            group = group_of.get(node, [])
            if reply.has_error():
                tally.failed += max(1, len(group)) if self.deployment else len(group)
                reason = reply.error.reason.strip().splitlines()[-1] if reply.error.reason else ""
                log.warning("round %d: node %d (clients %s) failed: %s", rnd, node, group, reason)
                continue
            lost = reply.content["metrics"].get(P.FAILED_KEY, []) if "metrics" in reply.content else []
            if lost:
                tally.failed += len(lost)
                log.warning("round %d: node %d: clients %s failed (see the client log)", rnd, node, list(lost))
            try:
                updates = list(iter_updates(reply))
            except Exception as e:  # garbage reply
                tally.rejected += max(1, len(group))
                log.warning("round %d: node %d sent a malformed reply: %s", rnd, node, e)
                continue
            for pid, content in updates:
                reason = self._check(pid, content, node, seen)
                if reason:
                    tally.rejected += 1
                    who = f"client {pid}" if pid is not None else "update"
                    log.warning("round %d: node %d %s: update rejected: %s", rnd, node, who, reason)
                    continue
                assert pid is not None  # _check rejects a missing partition id
                self._remember(pid, content)
                if self.deployment:
                    self.node_pid[node] = pid
                if content["metrics"].get(P.IDLE_KEY):  # it ran no step: its model is the global one
                    tally.idle += 1
                    continue
                tally.accept(pid, content)
        for node, group in group_of.items():
            if node not in answered:
                tally.failed += max(1, len(group)) if self.deployment else len(group)
                log.warning("round %d: node %d (clients %s) did not reply within %.0f s; "
                            "dropped from this round", rnd, node, group, self.round_timeout)
        return tally.updates, tally.info()

    def _check(self, pid: int | None, content: RecordDict, node: int, seen: dict[int, int]) -> str | None:
        if pid is None or not 0 <= pid < self.num_clients:
            return f"no valid {P.PARTITION_KEY} (got {pid}; expected 0..{self.num_clients - 1})"
        if self.deployment:
            if pid in seen:  # two SuperNodes configured with one partition-id
                return f"partition-id {pid} already sent by node {seen[pid]} this round"
            seen[pid] = node
        return check_update(content, self._global, self.sizes.get(pid), self.max_update_norm,
                            getattr(self.inner, "weighted_by_key", P.NUM_EXAMPLES))

    def _remember(self, pid: int, content: RecordDict) -> None:
        """A partition's size is the num-examples it first reported: later updates may
        not claim more weight. Its classes come with every reply."""
        m = content["metrics"]
        self.sizes.setdefault(pid, int(m[P.NUM_EXAMPLES]))
        present = m.get(P.CLASS_PRESENT_KEY)
        if isinstance(present, list):
            self.classes[pid] = tuple(i for i, v in enumerate(present) if v)

    def _inner_input(self, server_round: int, updates: list[tuple[int, RecordDict]]) -> list[Message]:
        """What the inner strategy aggregates, in partition id order: the weighted mean
        as one reply for a mean-then-step strategy, else one reply per update."""
        key = getattr(self.inner, "weighted_by_key", P.NUM_EXAMPLES)
        ordered = sorted(updates, key=lambda u: u[0])
        if takes_mean(self.inner) and all(key in c["metrics"] for _, c in ordered):
            pairs = [(c["arrays"], c["metrics"][key]) for _, c in ordered]
            return mean_replies(pairs, list(self._global), key, server_round)
        return client_replies(ordered, list(self._global), server_round, self._want_payload)

    # -- checkpoint --------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The inner strategy's data attributes (moments, momentum, centroids ...) and
        what the clients reported, for an exact resume."""
        inner = {k: _to_plain(v) for k, v in vars(self.inner).items() if not callable(v)}
        return {"inner": inner, "sizes": dict(self.sizes), "classes": dict(self.classes),
                "node_pid": dict(self.node_pid)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, v in state.get("inner", {}).items():
            setattr(self.inner, k, _from_plain(v))
        # a JSON checkpoint gives mapping keys back as strings
        self.sizes = {int(k): int(v) for k, v in state.get("sizes", {}).items()}
        self.classes = {int(k): tuple(v) for k, v in state.get("classes", {}).items()}
        self.node_pid = {int(k): int(v) for k, v in state.get("node_pid", {}).items()}


def _to_plain(v: Any) -> Any:
    if isinstance(v, ArrayRecord):
        return {"__arrayrecord__": {k: v[k].numpy() for k in v}}
    return v


def _from_plain(v: Any) -> Any:
    if isinstance(v, dict) and "__arrayrecord__" in v:
        return ArrayRecord({k: Array(np.asarray(a, order="C")) for k, a in v["__arrayrecord__"].items()})
    return v


def _cast(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Back to the global model's dtype; integer buffers are rounded, not truncated.
    ``np.asarray(order="C")`` keeps 0-d arrays 0-d (BatchNorm's num_batches_tracked)."""
    out = np.rint(a).astype(dtype) if np.issubdtype(dtype, np.integer) else a.astype(dtype, copy=False)
    return np.asarray(out, order="C")
