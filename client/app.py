"""fedssl ClientApp: restore the client's state, train locally, reply.

Works under fedssl's ServerApp (packed messages naming the partition ids to train,
payload records) and under any stock Flower server (one update for the node's own
``partition-id``; config keys it is not sent come from the run config, then from
fedssl's defaults; payloads it is not sent are simply absent).
"""

from __future__ import annotations

import logging
import time
from typing import Any, ClassVar

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedssl.client.runtime import ClientRuntime, config_from_context
from fedssl.client.stream import round_stage
from fedssl import protocol as P
from fedssl.config import Config
from fedssl.faults import apply_fault
from fedssl.flower_compat import encode_state
from fedssl.protocol import PAYLOAD, PIDS_KEY, packed_key
from fedssl.state import RUN_ID_KEY
from fedssl.timing import stamp

stamp("ClientApp imported (torch, Flower, fedssl)")  # in the driver too

log = logging.getLogger("fedssl")


class ClientMessage:
    """One message to this node, handled: the records and config it carries, read once,
    and the reply to it.

    Parameters
    ----------
    msg : Message
        A training or evaluation message from fedssl's ServerApp or a stock one.
    context : Context
        The node's context: its run config and node config (``partition-id``, shards).
    cfg : Config | None
        The experiment's config (``fedssl run``); None reads it from the run config.
    """

    #: (runtime, partition id) -> per class, 1 if the partition's shard holds it
    _classes: ClassVar[dict[tuple[int, int], list[int]]] = {}

    def __init__(self, msg: Message, context: Context, cfg: Config | None) -> None:
        self.msg = msg
        self.cfg = cfg = cfg or config_from_context(context)
        self.rt = ClientRuntime.get(cfg, context)
        self.config = config = msg.content["config"] if "config" in msg.content else ConfigRecord()
        self.server_round = int(config.get(P.SERVER_ROUND, 1))
        self.proximal_mu = float(config.get(P.PROXIMAL_MU, cfg.client.proximal_mu))
        self.want_payload = bool(config.get(P.WANT_PAYLOAD_KEY, False))
        self.keep_round = int(config.get(P.KEEP_ROUND_KEY, 0))
        # fedssl's server names its run; a stock server does not: Flower's run id keys the state
        self.stock = RUN_ID_KEY not in config
        self.run_id = str(config[RUN_ID_KEY]) if not self.stock else str(context.run_id)
        self.packed = PIDS_KEY in config

    def train(self) -> Message:
        """Train every partition the message names (or the node's own) and reply with
        one record set per partition."""
        content = self.msg.content
        payload_in = {k: v.numpy() for k, v in content[PAYLOAD].items()} if PAYLOAD in content else {}
        pids = [int(p) for p in self.config[PIDS_KEY]] if self.packed else [self.rt.own_partition_id()]
        t0 = time.perf_counter()
        global_state = content["arrays"].to_torch_state_dict()
        t_deser = (time.perf_counter() - t0) / len(pids)
        reply = RecordDict()
        failed: list[int] = []
        for pid in pids:
            try:
                self._train_one(pid, global_state, payload_in, t_deser, reply)
            except Exception as e:
                if not self.packed:
                    raise  # Flower turns it into an error reply for this node
                # One bad virtual client must not take its pack-mates down with it.
                log.error("client %d failed in round %d: %s", pid, self.server_round, e)
                failed.append(pid)
        stamp(f"worker: round {self.server_round}, {len(pids)} clients trained")
        if self.packed:
            ok = [p for p in pids if p not in failed]
            reply["metrics"] = MetricRecord({PIDS_KEY: ok, P.FAILED_KEY: failed, P.NUM_EXAMPLES: 0})
        return Message(reply, reply_to=self.msg)

    def evaluate(self) -> Message:
        """Federated evaluation for stock servers: the global model on the held-out labeled
        part of this node's shard (num-examples 0 and zero metrics when it has none)."""
        self.rt.model.load_state_dict(self.msg.content["arrays"].to_torch_state_dict())
        metrics = self.rt.evaluate_local(self.rt.own_partition_id())
        return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=self.msg)

    def query(self) -> Message:
        """Static BN's statistics round (``server.bn_stats = "server_clients"``): per
        partition named (or the node's own), the sums of ``fedssl.static_bn`` over its
        shard under the model sent."""
        if self.config.get(P.QUERY_KEY) != P.BN_STATS:
            raise ValueError(f"unknown query {self.config.get(P.QUERY_KEY)!r} (this ClientApp answers "
                             f"{P.QUERY_KEY}={P.BN_STATS!r})")
        self.rt.model.load_state_dict(self.msg.content["arrays"].to_torch_state_dict())
        pids = [int(p) for p in self.config[PIDS_KEY]] if self.packed else [self.rt.own_partition_id()]
        reply = RecordDict()
        for pid in pids:
            sums = ArrayRecord({k: Array(v) for k, v in self.rt.bn_stat_sums(pid).items()})
            reply[packed_key(P.BN_STATS, pid) if self.packed else P.BN_STATS] = sums
        if self.packed:
            reply["metrics"] = MetricRecord({PIDS_KEY: pids})
        return Message(reply, reply_to=self.msg)

    def _train_one(self, pid: int, global_state: dict, payload_in: dict, t_deser: float, reply: RecordDict) -> None:
        rt, cfg, server_round = self.rt, self.cfg, self.server_round
        t1 = time.perf_counter()
        rt.model.load_state_dict(global_state)
        state = rt.store.load(pid, self.run_id, before_round=server_round)
        t2 = time.perf_counter()
        stage = round_stage(cfg, self.config, server_round) if cfg.stream.stages else 0
        # under a stock server the labeled part evaluate() scores on is held out of training
        result = rt.train(pid, server_round, state, payload_in, self.proximal_mu, holdout=self.stock, stage=stage)
        t3 = time.perf_counter()
        rt.store.save(pid, self.run_id, server_round, result.state, self.keep_round)
        arrays = encode_state(apply_fault(cfg, pid, server_round, rt.model.state_dict(), global_state))
        t4 = time.perf_counter()
        metrics: dict[str, Any] = {
            P.NUM_EXAMPLES: int(result.num_examples),
            P.PARTITION_KEY: pid,
            P.CLASS_PRESENT_KEY: self._class_present(pid),
            # the same keys every round and client: Flower's strategies refuse replies
            # whose MetricRecords differ in keys
            **P.fill_train_metrics(cfg.algorithm_class.metric_keys, {k: float(v) for k, v in result.metrics.items()}),
            "t_state_s": (t2 - t1) + (t4 - t3),
            "t_data_s": result.timings["data_s"],
            "t_train_s": result.timings["train_s"],
            "t_deser_s": t_deser,
            **result.stream,
        }
        if cfg.algorithm_class.leave_out_idle:  # every reply then carries the key (Flower wants equal keys)
            metrics[P.IDLE_KEY] = int(result.idle)
        records = {"arrays": arrays, "metrics": MetricRecord(metrics)}
        if self.want_payload and result.payload:
            records[PAYLOAD] = ArrayRecord({k: Array(np.asarray(v, order="C")) for k, v in result.payload.items()})
        for name, rec in records.items():
            reply[packed_key(name, pid) if self.packed else name] = rec

    def _class_present(self, pid: int) -> list[int]:
        """Per class, 1 if partition ``pid``'s shard (labeled or not) holds it: the
        server's open-world evaluation splits unseen classes by how many shards hold them.
        Ground truth of the experiment, like the partition itself; no sample leaves."""
        key = (id(self.rt), pid)
        if key not in self._classes:
            d = self.rt.shard(pid)
            n = self.cfg.num_classes
            counts = torch.bincount(torch.cat([d.y_l, d.y_u]).long(), minlength=n)
            self._classes[key] = [int(c > 0) for c in counts[:n]]
        return self._classes[key]


def make_client_app(cfg: Config | None = None) -> ClientApp:
    """A ClientApp bound to ``cfg`` (``fedssl run``) or reading the run config
    (``flwr run``, deployment) when ``cfg`` is None."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return ClientMessage(msg, context, cfg).train()

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return ClientMessage(msg, context, cfg).evaluate()

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        return ClientMessage(msg, context, cfg).query()

    return app


app = make_client_app()

__all__ = ["app", "make_client_app", "torch"]
