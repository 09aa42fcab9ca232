"""Clients' replies in, the inner strategy's replies out.

A reply from fedssl's ClientApp packs one record set per virtual client
(``packed_key(record, pid)``, listed by ``metrics[PIDS_KEY]``); a stock one holds one
update. :func:`iter_updates` unpacks either; :class:`Tally` counts a round's accepted,
rejected and failed clients and averages their metrics; :func:`client_replies`
re-wraps the accepted updates one per client for the inner strategy, with the
algorithm's payload when the inner strategy asked for it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Message, MetricRecord, RecordDict

from fedssl import protocol as P
from fedssl.flower_compat import server_reply
from fedssl.strategies.validation import in_global_order


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


def client_replies(updates: list[tuple[int, RecordDict]], global_keys: list[str], server_round: int,
                   with_payload: bool) -> list[Message]:
    """One reply per accepted client, sorted by partition id: the arrays in the global
    model's order, the scalar metrics every update shares, and the payload if
    ``with_payload``."""
    updates = sorted(updates, key=lambda u: u[0])
    common = set.intersection(*(set(c["metrics"].keys()) for _, c in updates))
    keys = [P.NUM_EXAMPLES] + sorted(k for k in common if k.startswith("train_")
                                     and isinstance(updates[0][1]["metrics"][k], (int, float)))
    out = []
    for pid, content in updates:
        m = content["metrics"]
        rd = RecordDict({"arrays": in_global_order(content["arrays"], global_keys),
                         "metrics": MetricRecord({k: m[k] for k in keys})})
        if with_payload and P.PAYLOAD in content:
            rd[P.PAYLOAD] = content[P.PAYLOAD]
        out.append(server_reply(rd, pid, server_round))
    return out


class Tally:
    """One round's accepted updates and counts."""

    def __init__(self, messages: int) -> None:
        self.messages, self.rejected, self.failed, self.idle = messages, 0, 0, 0
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
        if self.idle:  # clients that had nothing to learn from, left out (Algorithm.leave_out_idle)
            out["idle_clients"] = self.idle
        # sorted: replies arrive in any order, and float sums depend on it (exact resume)
        out.update({k: float(np.mean(sorted(v))) for k, v in self.train.items()})
        out.update({k: v / max(1, len(self.updates)) for k, v in self.timing.items()})
        out["stream_clients"] = self.stream  # not a number: kept in last_round, not in the MetricRecord
        return out


def numeric(info: dict[str, Any]) -> dict[str, int | float]:
    """The entries of ``info`` a MetricRecord holds."""
    return {k: v for k, v in info.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
