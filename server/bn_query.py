"""Static batch norm over the server's and the clients' data (``server.bn_stats =
"server_clients"``, SemiFL's default ``sbn = 1``): after the server step, one query
message per node asks every client for its share of the statistics
(``fedssl.static_bn``: per BN channel the sums of batch means and variances and the
batch count over its shard, under the model sent); the server adds them to its own
labeled set's and sets the global model's running statistics. No sample leaves a client.

A reply that is missing, fails, or does not fit the model's BN layers (other names,
shapes, non-finite or negative values) is left out and counted; the statistics then
come from the rest, and from the server's set alone if nothing usable arrives.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedssl import protocol as P
from fedssl.flower_compat import is_simulation_grid
from fedssl.state import RUN_ID_KEY
from fedssl.static_bn import add_sums, bn_stat_sums, check_sums, set_bn_stats
from fedssl.strategies.node_sampling import wait_for_nodes
from fedssl.strategies.wrapper import FedSSLStrategy
from fedssl.threads import one_thread

log = logging.getLogger("fedssl")


def federated_bn_stats(grid: Grid, strategy: FedSSLStrategy, model: torch.nn.Module, server_x: torch.Tensor,
                       run_id: str, timeout: float) -> dict[str, Any]:
    """Set ``model``'s BN running statistics from ``server_x`` (normalised images) and
    every client's shard. Returns the round's ``bn_clients`` / ``bn_rejected`` counts."""
    t0 = time.perf_counter()
    with one_thread():  # as the server step: the bits must not depend on the process's thread count
        total = bn_stat_sums(model, server_x)
    arrays = ArrayRecord(model.state_dict())
    if is_simulation_grid(grid):
        nodes, groups = strategy.sampler.every_client(grid)
    else:  # each SuperNode answers for its own partition; before round 1, wait as round 1 would
        nodes = wait_for_nodes(grid, strategy.sampler.min_clients, timeout)
        groups = [[] for _ in nodes]
    messages = []
    for node, group in zip(nodes, groups):
        config = ConfigRecord({P.QUERY_KEY: P.BN_STATS, RUN_ID_KEY: run_id})
        if group:
            config[P.PIDS_KEY] = group
        messages.append(Message(RecordDict({"arrays": arrays, "config": config}), dst_node_id=node,
                                message_type=MessageType.QUERY))
    parts: list[tuple[int, dict[str, np.ndarray]]] = []
    rejected = 0
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error():
            rejected += 1
            log.warning("static BN: node %d failed: %s", reply.metadata.src_node_id, reply.error.reason)
            continue
        for name, rec in reply.content.array_records.items():
            if not name.startswith(P.BN_STATS):
                continue
            sums = {k: np.asarray(v.numpy(), dtype=np.float64) for k, v in rec.items()}
            why = check_sums(sums, total)
            if why:
                rejected += 1
                log.warning("static BN: reply %s of node %d left out: %s", name, reply.metadata.src_node_id, why)
                continue
            tail = name[len(P.BN_STATS) + 1:]
            parts.append((int(tail) if tail.isdigit() else reply.metadata.src_node_id, sums))
    for _, sums in sorted(parts, key=lambda p: p[0]):  # a fixed order of the float sums
        add_sums(total, sums)
    set_bn_stats(model, total)
    return {"bn_clients": float(len(parts)), "bn_rejected": float(rejected),
            "t_bn_stats_s": time.perf_counter() - t0}
