"""What fedssl adds around any Flower strategy, in one place.

:class:`FedSSLStrategy` is itself a ``flwr.serverapp.strategy.Strategy`` that wraps
an *inner* one (FedAvg, FedProx, Krum, a user's class ...). The inner strategy keeps
its own bookkeeping (FedProx's ``proximal-mu``, FedOpt's moments, FedAvgM's momentum)
through its own ``configure_train`` / ``aggregate_train``; the wrapper adds:

- deterministic sampling of virtual clients from ``run.seed`` and the round, and
  packing of several of them into one message per simulated node
  (:mod:`fedssl.sampling`); under a real SuperLink, one node = one partition;
- validation of every client's update before the inner strategy sees it
  (:mod:`fedssl.strategies.validation`), with one-line rejection reasons in the log;
- one reply per virtual client for the inner ``aggregate_train``, sorted by
  partition id so that the result does not depend on the packing;
- the algorithm's payload records (e.g. FedoSSL's centroids) both ways, for inner
  strategies that ask for them (``config[WANT_PAYLOAD_KEY]``);
- the inner strategy's reference model set to the arrays sent this round, so that a
  server step after aggregation reaches FedAvgM's momentum and FedOpt's moments
  (:mod:`fedssl.strategies.reference`: the rule, and a user strategy's hook);
- what the clients report about themselves: partition sizes (from ``num-examples``)
  and which classes their shards hold (evaluation bookkeeping of the open world).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from flwr.app import (DEFAULT_TTL, Array, ArrayRecord, ConfigRecord, Message, MessageType, Metadata,
                      MetricRecord, RecordDict)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedssl import protocol as P
from fedssl.config import ConfigError
from fedssl.sampling import auto_clients_per_node, pack, sample_clients, sample_nodes
from fedssl.strategies.aggregation import mean_reply, takes_mean, weighted_mean
from fedssl.strategies.reference import set_reference
from fedssl.strategies.validation import check_update, in_global_order

log = logging.getLogger("fedssl")


class FedSSLStrategy(Strategy):
    """Sampling, packing, validation and payloads around ``inner``."""

    def __init__(self, inner: Strategy, *, num_clients: int, fraction_train: float, min_clients: int,
                 seed: int, max_update_norm: float = 0.0, clients_per_node: int = 0,
                 num_cpus: float = 1.0, round_timeout: float = 600.0, model_bytes: int = 0,
                 deployment: bool | None = None) -> None:
        self.inner = inner
        self.num_clients, self.fraction_train, self.min_clients = num_clients, fraction_train, min_clients
        self.seed, self.max_update_norm = seed, max_update_norm
        self.clients_per_node, self.num_cpus = clients_per_node, num_cpus
        self.round_timeout, self.model_bytes = round_timeout, model_bytes
        self.deployment = deployment  # None: decided from the grid in the first round
        self.sizes: dict[int, int] = {}  # partition id -> num-examples it first reported
        self.classes: dict[int, tuple[int, ...]] = {}  # partition id -> classes its shard holds
        self.node_pid: dict[int, int] = {}  # deployment: partition id each node last reported
        self.last_round: dict[str, Any] = {}
        self._global: dict[str, np.ndarray] = {}
        self._sent: list[tuple[Message, list[int]]] = []
        self._want_payload = False
        self._started = False

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
        node_ids, groups = self._sample(server_round, grid)
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
        info["clients"] = len(updates)
        if not updates:
            self.last_round = info
            return None, MetricRecord(_numeric(info))
        t0 = time.perf_counter()
        arrays, _ = self.inner.aggregate_train(server_round, self._inner_input(server_round, updates))
        info["t_aggregate_s"] = time.perf_counter() - t0
        self.last_round = info
        if arrays is None:
            return None, MetricRecord(_numeric(info))
        # Flower's averages come back in float; integer buffers get their dtype back,
        # and the arrays come back in the global model's key order.
        out = ArrayRecord({k: Array(_cast(arrays[k].numpy(), ref.dtype)) for k, ref in self._global.items()})
        return out, MetricRecord(_numeric(info))

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return []  # fedssl evaluates centrally on the test split (server/loop.py)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies) if replies else None

    # -- training messages -----------------------------------------------------------
    def _inner_content(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                       grid: Grid) -> RecordDict:
        """The records the inner strategy would send this round (its config entries,
        e.g. FedProx's ``proximal-mu``, and any extra records such as a payload).
        Its node sampling is not used: it samples from a stand-in grid."""
        msgs = list(self.inner.configure_train(server_round, arrays, ConfigRecord(dict(config)),
                                               _TemplateGrid(grid, self.inner)))
        if msgs:
            return msgs[0].content
        log.warning("round %d: %s sampled no node; sending its config unchanged", server_round,
                    type(self.inner).__name__)
        return RecordDict({"arrays": arrays, "config": ConfigRecord({**dict(config),
                                                                     P.SERVER_ROUND: server_round})})

    def _sample(self, server_round: int, grid: Grid) -> tuple[list[int], list[list[int]]]:
        if self.deployment:
            # wait for min_clients nodes before the first round, so that a federation
            # still connecting does not start with a partial round
            ids = wait_for_nodes(grid, 1 if self._started else self.min_clients, self.round_timeout)
            self._started = True
            nodes = sample_nodes(ids, self.fraction_train, self.min_clients, self.seed, server_round)
            # groups only name the partition each node reported before (logging)
            return nodes, [[self.node_pid[n]] if n in self.node_pid else [] for n in nodes]
        pids = sample_clients(self.num_clients, self.fraction_train, self.min_clients, self.seed,
                              server_round)
        ids = wait_for_nodes(grid, 1, self.round_timeout)
        parallelism = max(1, min(len(ids), int(_cpus() / self.num_cpus)))
        cpn = self.clients_per_node or auto_clients_per_node(len(pids), parallelism, self.model_bytes)
        groups = pack(pids, cpn, len(ids))
        return ids[:len(groups)], groups

    # -- replies -----------------------------------------------------------------------
    def _collect(self, rnd: int, replies: list[Message]) -> tuple[list[tuple[int, RecordDict]], dict]:
        """Accepted (pid, {'arrays', 'metrics', 'payload'?}) per virtual client, and the
        round's counts: rejected/failed clients, mean train_* and t_* metrics."""
        group_of = {m.metadata.dst_node_id: g for m, g in self._sent}
        # A reply names the node it answers for by the message it replies to: error
        # replies made by the SuperLink itself carry the SuperLink's id as src_node_id.
        dst_of = {m.metadata.message_id: m.metadata.dst_node_id for m, _ in self._sent if m.metadata.message_id}
        tally = _Tally(messages=len(self._sent))
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
                tally.accept(pid, content)
                self._remember(pid, content)
                if self.deployment:
                    self.node_pid[node] = pid
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
        """What the inner strategy aggregates: for a weighted-mean strategy, one reply
        holding the mean of the updates computed in place (:mod:`fedssl.strategies.aggregation`,
        bit for bit Flower's); else one reply per update."""
        key = getattr(self.inner, "weighted_by_key", P.NUM_EXAMPLES)
        if not takes_mean(self.inner) or any(key not in c["metrics"] for _, c in updates):
            return self._inner_replies(server_round, updates)
        ordered = sorted(updates, key=lambda u: u[0])
        pairs = [(c["arrays"], c["metrics"][key]) for _, c in ordered]
        mean = weighted_mean(pairs, list(self._global))
        content = mean_reply(mean, key, sum(w for _, w in pairs))
        return [Message(content=content, metadata=reply_metadata(0, server_round))]

    def _inner_replies(self, server_round: int, updates: list[tuple[int, RecordDict]]) -> list[Message]:
        """One Flower reply per accepted client, sorted by partition id: the arrays,
        the scalar metrics every update shares, and the payload if the inner asked."""
        updates = sorted(updates, key=lambda u: u[0])
        common = set.intersection(*(set(c["metrics"].keys()) for _, c in updates))
        keys = [P.NUM_EXAMPLES] + sorted(k for k in common if k.startswith("train_")
                                         and isinstance(updates[0][1]["metrics"][k], (int, float)))
        out = []
        for pid, content in updates:
            m = content["metrics"]
            rd = RecordDict({"arrays": in_global_order(content["arrays"], self._global),
                             "metrics": MetricRecord({k: m[k] for k in keys})})
            if self._want_payload and P.PAYLOAD in content:
                rd[P.PAYLOAD] = content[P.PAYLOAD]
            out.append(Message(content=rd, metadata=reply_metadata(pid, server_round)))
        return out

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


class _Tally:
    """One round's accepted updates and counts."""

    def __init__(self, messages: int) -> None:
        self.messages, self.rejected, self.failed = messages, 0, 0
        self.updates: list[tuple[int, RecordDict]] = []
        self.timing: dict[str, float] = {}
        self.train: dict[str, list[float]] = {}
        self.stream: dict[int, dict[str, float]] = {}  # [stream]: each client's memory report

    def accept(self, pid: int, content: RecordDict) -> None:
        self.updates.append((pid, content))
        m = content["metrics"]
        report = {k: float(m[k]) for k in m.keys() if k.startswith("stream_")}  # type: ignore[arg-type]
        if report:
            self.stream[pid] = report
        names = sorted(k for k in m.keys() if k.startswith("train_") and k != P.PRESENT_KEY)
        present = m.get(P.PRESENT_KEY)
        if not (isinstance(present, list) and len(present) == len(names)):
            present = [1] * len(names)
        for k, flag in zip(names, present):
            v = m[k]
            # a metric the client filled with 0 (absent this round) is not averaged in
            if flag and isinstance(v, (int, float)):
                self.train.setdefault(k, []).append(float(v))
        for k in m.keys():
            if k.startswith("t_"):
                self.timing[k] = self.timing.get(k, 0.0) + float(m[k])  # type: ignore[arg-type]

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"clients": len(self.updates), "rejected_updates": self.rejected,
                               "failed_clients": self.failed, "messages": self.messages}
        # sorted: replies arrive in any order, and float sums depend on it (exact resume)
        out.update({k: float(np.mean(sorted(v))) for k, v in self.train.items()})
        out.update({k: v / max(1, len(self.updates)) for k, v in self.timing.items()})
        out["stream_clients"] = self.stream  # not a number: kept in last_round, not in the MetricRecord
        return out


class _TemplateGrid:
    """A stand-in grid for the inner strategy's ``configure_train``: it reports
    enough nodes for the inner's sampling never to wait."""

    def __init__(self, grid: Grid, inner: Strategy) -> None:
        self._grid = grid
        self._n = max(1, int(getattr(inner, "min_available_nodes", 1) or 1),
                      int(getattr(inner, "min_train_nodes", 1) or 1))

    def get_node_ids(self) -> list[int]:
        return list(range(1, self._n + 1))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def iter_updates(reply: Message) -> Iterable[tuple[int | None, RecordDict]]:
    """Unpack a reply into (partition id, {'arrays', 'metrics', 'payload'?}) per virtual
    client. A reply without packed keys is one update whose partition id is read from
    its metrics (None if absent)."""
    content = reply.content
    metrics = content["metrics"] if "metrics" in content else {}
    pids = metrics.get(P.PIDS_KEY)
    if pids is None:
        pid = metrics.get(P.PARTITION_KEY)
        yield (int(pid) if pid is not None else None), content  # type: ignore[arg-type]
        return
    for pid in pids:  # type: ignore[union-attr]
        pid = int(pid)
        rd = RecordDict()
        for rec in ("arrays", "metrics", P.PAYLOAD):
            key = P.packed_key(rec, pid)
            if key in content:
                rd[rec] = content[key]
        yield pid, rd


def reply_metadata(src: int, server_round: int) -> Metadata:
    """Metadata of a client update re-wrapped on the server for the inner strategy.
    Given explicitly because ``Message(dst_node_id=...)`` reads the process's Flower run
    identity, which exists only inside a running ServerApp."""
    return Metadata(run_id=0, message_id="", src_node_id=src, dst_node_id=0, reply_to_message_id="",
                    group_id=str(server_round), created_at=0.0, ttl=DEFAULT_TTL,
                    message_type=MessageType.TRAIN)


def wait_for_nodes(grid: Grid, min_count: int, timeout: float) -> list[int]:
    """Connected node ids, waiting up to ``timeout`` for ``min_count`` of them."""
    deadline = time.time() + timeout
    while True:
        ids = sorted(grid.get_node_ids())
        if len(ids) >= min_count or time.time() > deadline:
            if 0 < len(ids) < min_count:
                log.warning("only %d of federation.min_clients=%d nodes connected after %.0f s; "
                            "going on with them", len(ids), min_count, timeout)
            if not ids:
                raise ConfigError("no client node connected (no SuperNode joined the SuperLink)")
            return ids
        time.sleep(0.5)


def is_simulation_grid(grid: Grid) -> bool:
    """True under Flower's Simulation Engine (``run_simulation`` and ``flwr run`` on a
    simulation SuperLink drive the ServerApp through an ``InMemoryGrid``); False under
    a real SuperLink, where each SuperNode owns one partition."""
    return any(c.__name__ == "InMemoryGrid" for c in type(grid).__mro__)


def _numeric(info: dict[str, Any]) -> dict[str, int | float]:
    return {k: v for k, v in info.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


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


def _cpus() -> float:
    import os

    return float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


ServerUpdate = Callable[[ArrayRecord, int], ArrayRecord]
