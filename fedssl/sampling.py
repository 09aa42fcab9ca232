"""Deterministic client sampling and client packing.

Sampling draws virtual client (partition) ids from ``run.seed`` and the round only,
so the same config samples the same clients whatever the number of nodes. Packing
groups sampled clients into messages: one simulated Flower node trains several
virtual clients per message and replies with one update per client, which amortises
Flower's per-message cost without changing per-client semantics.
"""

from __future__ import annotations

import math

import numpy as np

from fedssl.seeding import derive_seed


def sample_clients(num_clients: int, fraction: float, min_clients: int, seed: int,
                   server_round: int) -> list[int]:
    """Sorted partition ids trained in ``server_round``."""
    k = min(num_clients, max(min_clients, int(round(num_clients * fraction))))
    if k >= num_clients:
        return list(range(num_clients))
    rng = np.random.default_rng(derive_seed(seed, "sample", server_round))
    return sorted(int(i) for i in rng.choice(num_clients, size=k, replace=False))


def pack(client_ids: list[int], clients_per_node: int, num_nodes: int) -> list[list[int]]:
    """Split ids into at most ``num_nodes`` contiguous groups of <= clients_per_node
    (more per group when there are too few nodes)."""
    if not client_ids:
        return []
    groups = min(num_nodes, math.ceil(len(client_ids) / max(1, clients_per_node)))
    return [[int(i) for i in g] for g in np.array_split(np.asarray(client_ids), groups) if len(g)]


#: Upper bound on the model updates one packed reply carries (it crosses Ray's object
#: store as one message): about 200 clients of the CNN, 1 of ResNet-18 at 44 MiB.
REPLY_BYTES = 64 * 2**20


def auto_clients_per_node(num_clients: int, parallelism: int, model_bytes: int = 0) -> int:
    """Default packing: two messages per worker and round, so Flower's per-message
    floor (~20 ms) is paid a few times per round rather than once per client and a
    worker that finishes first still finds a message waiting; at most
    ``REPLY_BYTES`` of updates per reply (measured in benchmarks/sim_overhead.py)."""
    parallelism = max(1, parallelism)
    cap = max(1, REPLY_BYTES // model_bytes) if model_bytes > 0 else 16
    # A multiple of the workers, so that none trains a message more than the others
    # (1000 CNN clients on 2 workers: 6 messages of 167, not 5 of 200 (3 + 2)).
    messages = max(2 * parallelism, math.ceil(num_clients / cap))
    messages = math.ceil(messages / parallelism) * parallelism
    return max(1, min(cap, math.ceil(num_clients / messages)))


def sample_nodes(node_ids: list[int], fraction: float, min_clients: int, seed: int,
                 server_round: int) -> list[int]:
    """Deployment sampling: sorted node ids trained in ``server_round``, drawn from
    ``run.seed`` and the round (node ids are assigned by the SuperLink, so the draw is
    reproducible for a given set of connected nodes only)."""
    ids = sorted(int(i) for i in node_ids)
    k = min(len(ids), max(min_clients, int(round(len(ids) * fraction))))
    if k >= len(ids):
        return ids
    rng = np.random.default_rng(derive_seed(seed, "sample-nodes", server_round))
    return sorted(int(ids[i]) for i in rng.choice(len(ids), size=k, replace=False))
