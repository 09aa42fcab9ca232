"""Which nodes train this round, and which virtual clients each one trains.

Under Flower's Simulation Engine every node is a stand-in that trains the partitions
it is sent (``config[PIDS_KEY]``): the clients are sampled from ``run.seed`` and the
round and packed several to a message (:mod:`fedssl.sampling`). Under a real
SuperLink each SuperNode owns one partition, so nodes are sampled instead.
"""

from __future__ import annotations

import logging
import time

from flwr.serverapp import Grid

from fedssl.config import ConfigError
from fedssl.local_ray import usable_cpus
from fedssl.sampling import auto_clients_per_node, pack, sample_clients, sample_nodes

log = logging.getLogger("fedssl")


class NodeSampler:
    """Deterministic sampling of nodes and of the virtual clients they train.

    Parameters
    ----------
    num_clients : int
        Virtual clients (partitions) in the federation.
    fraction_train : float
        Share of the clients (simulation) or nodes (deployment) sampled each round.
    min_clients : int
        At least this many are sampled; a deployment waits for this many nodes
        before its first round.
    seed : int
        The run's seed: the sample depends only on it and the round.
    clients_per_node : int
        Virtual clients packed into one message; 0 picks a count from the CPUs, the
        clients' CPU share and ``model_bytes``.
    num_cpus : float
        CPUs each client takes (``federation.num_cpus``).
    round_timeout : float
        Seconds to wait for nodes to connect.
    model_bytes : int
        Size of the model's weights, for the automatic packing.
    """

    def __init__(self, num_clients: int, fraction_train: float, min_clients: int, seed: int,
                 clients_per_node: int = 0, num_cpus: float = 1.0, round_timeout: float = 600.0,
                 model_bytes: int = 0) -> None:
        self.num_clients, self.fraction_train, self.min_clients = num_clients, fraction_train, min_clients
        self.seed, self.clients_per_node, self.num_cpus = seed, clients_per_node, num_cpus
        self.round_timeout, self.model_bytes = round_timeout, model_bytes
        self._started = False

    def simulation(self, server_round: int, grid: Grid) -> tuple[list[int], list[list[int]]]:
        """(node ids, the partition ids each one trains)."""
        pids = sample_clients(self.num_clients, self.fraction_train, self.min_clients, self.seed, server_round)
        ids = wait_for_nodes(grid, 1, self.round_timeout)
        parallelism = max(1, min(len(ids), int(usable_cpus() / self.num_cpus)))
        cpn = self.clients_per_node or auto_clients_per_node(len(pids), parallelism, self.model_bytes)
        groups = pack(pids, cpn, len(ids))
        return ids[:len(groups)], groups

    def every_client(self, grid: Grid) -> tuple[list[int], list[list[int]]]:
        """(node ids, the partition ids each one serves): every client once, packed as
        a round's sample would be (static BN's statistics round)."""
        pids = list(range(self.num_clients))
        ids = wait_for_nodes(grid, 1, self.round_timeout)
        parallelism = max(1, min(len(ids), int(usable_cpus() / self.num_cpus)))
        cpn = self.clients_per_node or auto_clients_per_node(len(pids), parallelism, self.model_bytes)
        groups = pack(pids, cpn, len(ids))
        return ids[:len(groups)], groups

    def deployment(self, server_round: int, grid: Grid) -> list[int]:
        """The node ids sampled this round. Before the first round it waits for
        ``min_clients`` nodes, so that a federation still connecting does not start
        with a partial round."""
        ids = wait_for_nodes(grid, 1 if self._started else self.min_clients, self.round_timeout)
        self._started = True
        return sample_nodes(ids, self.fraction_train, self.min_clients, self.seed, server_round)


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


