"""Per-process client runtime. The dataset, the model and the algorithm are built once
per process (a Ray actor, or a SuperNode's app process) and experiment, and shared by
every node whose messages the process handles: an actor of the Simulation Engine
serves several nodes in turn, and each message loads the global weights into the model
before it trains. What belongs to one node (its node config, its shard when it has a
``data-dir``, its state store) is a :class:`ClientRuntime` of its own."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from flwr.app import Context
from torch import nn

from fedssl.algorithms import Algorithm

from fedssl.config import Config, ConfigError
from fedssl.data import client_shard
from fedssl.metrics import evaluate_logits, predict
from fedssl.models import run_model
from fedssl.protocol import config_from_run_config
from fedssl.state import ClientStateStore
from fedssl.data.tensors import ClientData, client_data
from fedssl.seeding import derive_seed
from fedssl.timing import stamp
from fedssl.training import TrainResult, build_algorithm, train_client

#: share of a client's labeled examples held out of training for stock-server evaluation
HOLDOUT_FRACTION = 0.2


def config_from_context(context: Context) -> Config:
    """Config from the run config (``flwr run --run-config``), known keys only."""
    return config_from_run_config(context.run_config)


class ClientRuntime:
    _cache: ClassVar[dict[Any, ClientRuntime]] = {}

    def __init__(self, cfg: Config, node_config: dict[str, Any]) -> None:
        self.cfg = cfg
        self.node_config = node_config
        self.data_dir = node_config.get("data-dir")
        if self.data_dir:
            from fedssl.data.export import load_client_shard
            self.local = load_client_shard(self.data_dir, node_config, cfg)
            _, channels, side, _ = self.local.x_l.shape if len(self.local.y_l) else self.local.x_u.shape
        else:
            splits, _ = client_shard(cfg.data, cfg.run.seed, 0)
            _, side, _, channels = splits.train_x.shape
        self.device, self.model, self.algorithm = _trainer(cfg, channels, side)
        state_dir = node_config.get("state-dir") or os.path.join(cfg.run.out_dir, "client_state")
        self.store = ClientStateStore(Path(state_dir))
        stamp("worker: runtime built (dataset, model, algorithm)")

    @classmethod
    def get(cls, cfg: Config, context: Context) -> ClientRuntime:
        node_config = dict(context.node_config)
        key = (cfg, tuple(sorted((k, str(v)) for k, v in node_config.items())))
        if key not in cls._cache:
            if any(k[0] != cfg for k in cls._cache):
                cls._cache.clear()  # one experiment per process at a time
            cls._cache[key] = cls(cfg, node_config)
        return cls._cache[key]

    def own_partition_id(self) -> int:
        if "partition-id" not in self.node_config:
            raise ConfigError("node config has no partition-id (set --node-config "
                              "\"partition-id=0 num-partitions=N\")")
        return int(self.node_config["partition-id"])

    def shard(self, partition_id: int) -> ClientData:
        if self.data_dir:
            return self.local
        n = self.cfg.data.num_clients
        if not 0 <= partition_id < n:
            raise ConfigError(f"partition-id {partition_id} outside [0, {n})")
        splits, shard = client_shard(self.cfg.data, self.cfg.run.seed, partition_id)
        return client_data(splits.train_x, splits.train_y, shard.labeled, shard.unlabeled)

    def bn_stat_sums(self, partition_id: int) -> dict[str, np.ndarray]:
        """Static BN's share of this shard (every image, un-augmented) under the model
        as loaded: per BN layer the sums of batch means and variances and the batch
        count (``fedssl.static_bn``). Three numbers per channel leave, no sample."""
        from fedssl.data.augment import normalize
        from fedssl.static_bn import bn_stat_sums

        d = self.shard(partition_id)
        return bn_stat_sums(self.model, normalize(torch.cat([d.x_l, d.x_u])))

    def split_holdout(self, partition_id: int, d: ClientData | None = None) -> tuple[ClientData, ClientData]:
        """(training part, held-out part) of the shard (or of ``d``): a seeded
        HOLDOUT_FRACTION of the labeled examples (at least one when there are two or
        more, none below)."""
        d = d if d is not None else self.shard(partition_id)
        n = len(d.y_l)
        k = max(1, round(HOLDOUT_FRACTION * n)) if n >= 2 else 0
        gen = torch.Generator().manual_seed(derive_seed(self.cfg.run.seed, "eval-holdout", partition_id))
        perm = torch.randperm(n, generator=gen)
        ev, tr = perm[:k].sort().values, perm[k:].sort().values
        return (ClientData(d.x_l[tr], d.y_l[tr], d.x_u, d.y_u, d.flip),
                ClientData(d.x_l[ev], d.y_l[ev], d.x_u[:0], d.y_u[:0], d.flip))

    def train(self, partition_id: int, server_round: int, state: Any,
              payload: dict[str, np.ndarray], proximal_mu: float, holdout: bool = False,
              stage: int = 0) -> TrainResult:
        """One local round; with ``holdout`` (stock servers) the evaluation part is left out.
        Incremental runs train on ``stage``'s shard and the client's memory (client.stream)."""
        if self.cfg.stream.stages:
            return self._train_stage(partition_id, server_round, state, payload, proximal_mu, holdout, stage)
        data = self.split_holdout(partition_id)[0] if holdout else self.shard(partition_id)
        return train_client(self.model, self.algorithm, data, self.cfg,
                            server_round=server_round, partition_id=partition_id, state=state,
                            payload=payload, proximal_mu=proximal_mu, device=self.device)

    def _train_stage(self, partition_id: int, server_round: int, state: Any, payload: dict[str, np.ndarray],
                     proximal_mu: float, holdout: bool, stage: int) -> TrainResult:
        from fedssl.client import stream

        if self.data_dir:
            raise ConfigError("stream.stages > 0 needs the dataset on the node (no data-dir shards)")
        data = stream.stage_data(self.cfg, partition_id, stage)
        if holdout:
            data = self.split_holdout(partition_id, data)[0]
        mem, train, prev = stream.prepare(self.cfg, self.algorithm, self.model, data, stage, state, partition_id)
        result = train_client(self.model, self.algorithm, train, self.cfg, server_round=server_round,
                              partition_id=partition_id, state=state, payload=payload,
                              proximal_mu=proximal_mu, device=self.device, stage=stage, prev_model=prev)
        # held: the stage's shard and the buffer (``train`` holds replayed buffer entries again)
        result.stream = stream.finish(mem, data, result.state, result.sample_passes)
        # FedAvg weight: the client's whole shard (its stages are equal parts of it), so a
        # weight never changes across stages and never exceeds the first one reported
        whole = self.shard(partition_id)
        result.num_examples = max(1, len(whole.y_l) + (len(whole.y_u) if self.algorithm.uses_unlabeled else 0))
        return result

    def evaluate_local(self, partition_id: int) -> dict[str, float]:
        from fedssl.data.augment import normalize

        d = self.split_holdout(partition_id)[1]
        if len(d.y_l) == 0:  # weight 0 in the server's mean; zeros, not NaN, so the mean stays finite
            return {"num-examples": 0, "eval_loss": 0.0, "eval_acc": 0.0}
        m = evaluate_logits(predict(self.model, normalize(d.x_l))[1], d.y_l.numpy(), self.cfg.num_classes,
                            self.cfg.num_seen)
        return {"num-examples": len(d.y_l), "eval_loss": m["loss"], "eval_acc": m["acc_seen"]}


@functools.lru_cache(maxsize=1)  # one experiment per process at a time
def _trainer(cfg: Config, in_channels: int, image_size: int) -> tuple[torch.device, nn.Module, Algorithm]:
    """(device, model, algorithm) of this process, built once and shared by its nodes."""
    torch.set_num_threads(max(1, int(cfg.federation.num_cpus)))
    use_cuda = cfg.federation.num_gpus > 0 and torch.cuda.is_available()
    device = torch.device("cuda" if use_cuda else "cpu")
    return device, run_model(cfg, in_channels, image_size).to(device), build_algorithm(cfg)
