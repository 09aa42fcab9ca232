"""fedssl ClientApp: restore the client's state, train locally, reply.

Works under fedssl's ServerApp (packed messages naming the partition ids to train,
payload records) and under any stock Flower server (one update for the node's own
``partition-id``; config keys it is not sent come from the run config, then from
fedssl's defaults; payloads it is not sent are simply absent).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedssl.client.runtime import ClientRuntime, config_from_context
from fedssl.client.stream import round_stage
from fedssl import protocol as P
from fedssl.config import Config
from fedssl.faults import apply_fault
from fedssl.protocol import PAYLOAD, PIDS_KEY, packed_key
from fedssl.state import RUN_ID_KEY

log = logging.getLogger("fedssl")


def _train(msg: Message, context: Context, cfg: Config | None) -> Message:
    cfg = cfg or config_from_context(context)
    rt = ClientRuntime.get(cfg, context)
    config = msg.content["config"] if "config" in msg.content else {}
    server_round = int(config.get(P.SERVER_ROUND, 1))
    proximal_mu = float(config.get(P.PROXIMAL_MU, cfg.client.proximal_mu))
    want_payload = bool(config.get(P.WANT_PAYLOAD_KEY, False))
    keep_round = int(config.get(P.KEEP_ROUND_KEY, 0))
    # fedssl's server names its run; a stock server does not: Flower's run id keys the state
    stock = RUN_ID_KEY not in config
    run_id = str(config[RUN_ID_KEY]) if not stock else str(context.run_id)
    payload_in = ({k: v.numpy() for k, v in msg.content[PAYLOAD].items()}
                  if PAYLOAD in msg.content else {})
    packed = PIDS_KEY in config
    pids = [int(p) for p in config[PIDS_KEY]] if packed else [rt.own_partition_id()]

    t0 = time.perf_counter()
    global_state = msg.content["arrays"].to_torch_state_dict()
    t_deser = time.perf_counter() - t0
    reply = RecordDict()
    failed: list[int] = []
    for pid in pids:
        try:
            _train_one(rt, cfg, pid, server_round, global_state, payload_in, proximal_mu,
                       want_payload, (run_id, keep_round, stock), packed, t_deser / len(pids), reply, config)
        except Exception as e:
            if not packed:
                raise  # Flower turns it into an error reply for this node
            # One bad virtual client must not take its pack-mates down with it.
            log.error("client %d failed in round %d: %s", pid, server_round, e)
            failed.append(pid)
    if packed:
        ok = [p for p in pids if p not in failed]
        reply["metrics"] = MetricRecord({PIDS_KEY: ok, P.FAILED_KEY: failed, P.NUM_EXAMPLES: 0})
    return Message(reply, reply_to=msg)


def _train_one(rt: ClientRuntime, cfg: Config, pid: int, server_round: int, global_state: dict,
               payload_in: dict, proximal_mu: float, want_payload: bool, run: tuple[str, int, bool],
               packed: bool, t_deser: float, reply: RecordDict, config: Any = None) -> None:
    run_id, keep_round, stock = run
    t1 = time.perf_counter()
    rt.model.load_state_dict(global_state)
    state = rt.store.load(pid, run_id, before_round=server_round)
    t2 = time.perf_counter()
    # under a stock server the labeled part evaluate() scores on is held out of training
    stage = round_stage(cfg, config, server_round) if cfg.stream.stages else 0
    result = rt.train(pid, server_round, state, payload_in, proximal_mu, holdout=stock, stage=stage)
    t3 = time.perf_counter()
    rt.store.save(pid, run_id, server_round, result.state, keep_round)
    arrays = npy_record(apply_fault(cfg, pid, server_round, rt.model.state_dict(), global_state))
    t4 = time.perf_counter()
    metrics: dict[str, Any] = {
        P.NUM_EXAMPLES: int(result.num_examples),
        P.PARTITION_KEY: pid,
        P.CLASS_PRESENT_KEY: _class_present(rt, pid),
        # the same keys every round and client: Flower's strategies refuse replies
        # whose MetricRecords differ in keys
        **P.fill_train_metrics(cfg.algorithm_class.metric_keys, {k: float(v) for k, v in result.metrics.items()}),
        "t_state_s": (t2 - t1) + (t4 - t3),
        "t_data_s": result.timings["data_s"],
        "t_train_s": result.timings["train_s"],
        "t_deser_s": t_deser,
        **result.stream,
    }
    records = {"arrays": arrays, "metrics": MetricRecord(metrics)}
    if want_payload and result.payload:
        records[PAYLOAD] = ArrayRecord({k: Array(np.asarray(v, order="C")) for k, v in result.payload.items()})
    for name, rec in records.items():
        reply[packed_key(name, pid) if packed else name] = rec


_NPY_HEADERS: dict[tuple[str, tuple[int, ...]], bytes] = {}


def npy_record(state: dict[str, torch.Tensor]) -> ArrayRecord:
    """``ArrayRecord(state)`` with the same bytes (``np.save``'s .npy layout), built
    without ``np.save`` per tensor: the header of each (dtype, shape) is made by
    ``np.save`` once per process and reused, the data is appended in one copy."""
    out = {}
    for k, t in state.items():
        a = t.detach().cpu().numpy()
        if not a.flags.c_contiguous or a.dtype.hasobject:
            out[k] = Array(a)
            continue
        key = (a.dtype.str, a.shape)
        header = _NPY_HEADERS.get(key)
        if header is None:
            full = Array(a).data
            header = _NPY_HEADERS[key] = full[:len(full) - a.nbytes]
        out[k] = Array(dtype=str(a.dtype), shape=tuple(a.shape), stype="numpy.ndarray",
                       data=b"".join((header, a.reshape(-1).view(np.uint8))))
    return ArrayRecord(out)


_CLASSES: dict[tuple[int, int], list[int]] = {}


def _class_present(rt: ClientRuntime, pid: int) -> list[int]:
    """Per class, 1 if partition ``pid``'s shard (labeled or not) holds it: the
    server's open-world evaluation splits unseen classes by how many shards hold them.
    Ground truth of the experiment, like the partition itself; no sample leaves."""
    key = (id(rt), pid)
    if key not in _CLASSES:
        d = rt.shard(pid)
        counts = torch.bincount(torch.cat([d.y_l, d.y_u]).long(), minlength=rt.cfg.num_classes)
        _CLASSES[key] = [int(c > 0) for c in counts[:rt.cfg.num_classes]]
    return _CLASSES[key]


def _evaluate(msg: Message, context: Context, cfg: Config | None) -> Message:
    """Federated evaluation for stock servers: the global model on the held-out labeled
    part of this node's shard (num-examples 0 and zero metrics when it has none)."""
    cfg = cfg or config_from_context(context)
    rt = ClientRuntime.get(cfg, context)
    rt.model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    metrics = rt.evaluate_local(rt.own_partition_id())
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


def make_client_app(cfg: Config | None = None) -> ClientApp:
    """A ClientApp bound to ``cfg`` (``fedssl run``) or reading the run config
    (``flwr run``, deployment) when ``cfg`` is None."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return _train(msg, context, cfg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return _evaluate(msg, context, cfg)

    return app


app = make_client_app()

__all__ = ["app", "make_client_app", "torch"]
