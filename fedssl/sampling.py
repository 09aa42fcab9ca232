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

from fedssl.training import derive_seed


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


def auto_clients_per_node(num_clients: int, parallelism: int) -> int:
    """Default packing: enough virtual clients per message to amortise Flower's
    per-message floor (~20 ms), while keeping every worker busy each round
    (measured in benchmarks/sim_overhead.py)."""
    return max(1, min(16, math.ceil(num_clients / max(1, 2 * parallelism))))
