"""What fedssl adds to Flower's strategies: deterministic sampling and client
packing, named payload records, update validation, and checkpoint hooks.

A fedssl strategy is ``class X(FedSSLStrategy, flwr.serverapp.strategy.Y)``:
Flower's ``Y.aggregate_train`` does the arithmetic (weighted averaging, server
momentum, adaptive server optimisers); this mixin feeds it only validated updates,
one per virtual client, sorted by partition id so the result does not depend on
how clients were packed into messages.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import (DEFAULT_TTL, Array, ArrayRecord, ConfigRecord, Message, MessageType, Metadata,
                      MetricRecord, RecordDict)

from fedssl.config import Config
from strategies.validation import in_global_order

log = logging.getLogger("fedssl")

PIDS_KEY = "fedssl.pids"  # ConfigRecord key: partition ids a packed message trains
PAYLOAD = "payload"  # ArrayRecord with the algorithm's extra arrays


def packed_key(record: str, pid: int) -> str:
    return f"{record}.{pid}"


class FedSSLStrategy:
    """Mixin placed before the Flower strategy class in the bases."""

    #: attributes holding strategy state that a checkpoint must carry
    state_attrs: tuple[str, ...] = ()
    #: whether clients should send their algorithm payload back
    wants_payload: bool = False

    def __init__(self, cfg: Config, **flower_kwargs: Any) -> None:
        super().__init__(fraction_train=cfg.federation.fraction_train, fraction_evaluate=0.0,
                         min_train_nodes=1, min_available_nodes=1, **flower_kwargs)
        self.cfg = cfg

    # -- hooks -----------------------------------------------------------------
    def remember_global(self, arrays: ArrayRecord) -> None:
        """Called with the global model before each round (server optimisers)."""

    def client_config(self, server_round: int) -> dict[str, Any]:
        """Extra ConfigRecord entries for this round's clients."""
        return {}

    def train_payload(self, server_round: int) -> dict[str, np.ndarray]:
        """Extra arrays sent to clients as the 'payload' ArrayRecord."""
        return {}

    def absorb_payloads(self, server_round: int, payloads: list[tuple[int, dict[str, np.ndarray]]]) -> None:
        """Consume the accepted clients' payloads (after aggregation)."""

    # -- messages --------------------------------------------------------------
    def build_messages(self, server_round: int, arrays: ArrayRecord, groups: list[list[int]],
                       node_ids: list[int], base_config: dict[str, Any]) -> list[Message]:
        """One TRAIN message per group of partition ids, to ``node_ids[i]``."""
        self.remember_global(arrays)
        config = {**base_config, **self.client_config(server_round), "server-round": server_round,
                  "fedssl.payload": self.wants_payload}
        payload = self.train_payload(server_round)
        messages = []
        for node_id, group in zip(node_ids, groups):
            content = RecordDict({"arrays": arrays,
                                  "config": ConfigRecord({**config, PIDS_KEY: list(group)})})
            if payload:
                content[PAYLOAD] = to_arrayrecord(payload)
            messages.append(Message(content=content, dst_node_id=node_id,
                                    message_type=MessageType.TRAIN))
        return messages

    def aggregate(self, server_round: int, updates: list[tuple[int, RecordDict]],
                  global_arrays: dict[str, np.ndarray]) -> ArrayRecord | None:
        """Aggregate validated per-client updates with the Flower strategy."""
        updates = sorted(updates, key=lambda u: u[0])
        replies = []
        for pid, content in updates:
            n = int(content["metrics"]["num-examples"])
            rd = RecordDict({"arrays": in_global_order(content["arrays"], global_arrays),
                             "metrics": MetricRecord({"num-examples": n})})
            replies.append(Message(content=rd, metadata=_reply_metadata(pid, server_round)))
        if not replies:
            return None
        arrays, _ = self.aggregate_train(server_round, replies)
        if arrays is None:
            return None
        # Flower averages in float; give integer buffers their dtype back.
        return to_arrayrecord({k: _cast(arrays[k].numpy(), global_arrays[k].dtype)
                               for k in global_arrays})

    # -- checkpoint ------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        out = {}
        for name in self.state_attrs:
            v = getattr(self, name, None)
            out[name] = _to_plain(v)
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, v in state.items():
            setattr(self, name, _from_plain(v))


def _to_plain(v: Any) -> Any:
    if isinstance(v, ArrayRecord):
        return {"__arrayrecord__": {k: v[k].numpy() for k in v}}
    return v


def _from_plain(v: Any) -> Any:
    if isinstance(v, dict) and "__arrayrecord__" in v:
        return to_arrayrecord(v["__arrayrecord__"])
    return v


def _reply_metadata(pid: int, server_round: int) -> Metadata:
    """Metadata for an update re-wrapped on the server only to call Flower's
    ``aggregate_train``. Given explicitly because ``Message(dst_node_id=...)`` reads the
    process's Flower run identity, which exists only inside a running ServerApp."""
    return Metadata(run_id=0, message_id="", src_node_id=pid, dst_node_id=0, reply_to_message_id="",
                    group_id=str(server_round), created_at=0.0, ttl=DEFAULT_TTL,
                    message_type=MessageType.TRAIN)


def iter_updates(reply: Message) -> Iterable[tuple[int | None, RecordDict]]:
    """Unpack a reply into (partition id, {'arrays', 'metrics', 'payload'?}) per
    virtual client. A reply without packed keys is one update whose partition id
    is read from its metrics (None if absent)."""
    content = reply.content
    pids = content["metrics"].get("fedssl.pids") if "metrics" in content else None
    if pids is None:
        pid = content["metrics"].get("partition-id") if "metrics" in content else None
        yield (int(pid) if pid is not None else None), content
        return
    for pid in pids:
        pid = int(pid)
        rd = RecordDict()
        for rec in ("arrays", "metrics", PAYLOAD):
            key = packed_key(rec, pid)
            if key in content:
                rd[rec] = content[key]
        yield pid, rd


def to_arrayrecord(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """ArrayRecord from named numpy arrays (order kept). ``np.asarray(order="C")``, not
    ``np.ascontiguousarray``, which turns 0-d arrays (BatchNorm's num_batches_tracked)
    into shape (1,)."""
    return ArrayRecord({k: Array(np.asarray(v, order="C")) for k, v in arrays.items()})


def _cast(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Back to the global model's dtype; integer buffers are rounded, not truncated."""
    return np.rint(a).astype(dtype) if np.issubdtype(dtype, np.integer) else a.astype(dtype, copy=False)
