"""The client side of an incremental run ([stream]): the stage's shard, the client's
memory across stages (replay buffer, previous stage's model) and its accounting.

The stage comes with the round's config (``fedssl.stage``); a server that does not send
it (a stock Flower server) gets the stage of its round number. The buffer bound is
applied here, whatever the algorithm: the algorithm only declares a policy.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import torch
from torch import nn

from fedssl.algorithms import Algorithm
from fedssl.protocol import STAGE_KEY
from fedssl.config import Config
from fedssl.stream.memory import StreamMemory
from fedssl.stream.stages import client_stage, stage_of_round
from fedssl.data.tensors import ClientData, nchw_tensor

def round_stage(cfg: Config, config: Any, server_round: int) -> int:
    """The round's stage: from the message's config, else from the round number."""
    if config is not None and STAGE_KEY in config:
        return int(config[STAGE_KEY])
    return stage_of_round(cfg.stream, server_round)


@functools.lru_cache(maxsize=32)
def stage_data(cfg: Config, partition_id: int, stage: int) -> ClientData:
    """The client's samples of ``stage``, in the stage's domain (cached: a client trains
    several rounds in one stage; never modified by its users)."""
    x_l, y_l, _, x_u, y_u, _ = client_stage(cfg, partition_id, stage)
    return ClientData(nchw_tensor(x_l), torch.from_numpy(y_l), nchw_tensor(x_u), torch.from_numpy(y_u))


def prepare(cfg: Config, algorithm: Algorithm, model: nn.Module, data: ClientData, stage: int,
            state: tuple[int, dict[str, torch.Tensor]] | None, partition_id: int,
            ) -> tuple[StreamMemory, ClientData, nn.Module | None]:
    """Before training: the client's memory (entering ``stage`` if new, with ``model``
    holding the received global weights), the data to train on (the stage's shard plus
    the replayed buffer) and the previous stage's model, when the algorithm uses it."""
    mem = StreamMemory.from_state(state[1] if state else {}, cfg.stream.stages)
    bound = cfg.stream.buffer
    x = torch.cat([data.x_l, data.x_u])
    y = torch.cat([data.y_l, torch.full_like(data.y_u, -1)])
    mem.enter(stage, x, y, algorithm.replay, bound, model.state_dict() if algorithm.uses_prev_model else None,
              cfg.run.seed, partition_id)
    if algorithm.replay == "reservoir" and len(mem.buf_y) > bound:  # the runtime's bound, whatever happened
        raise RuntimeError(f"client {partition_id}: replay buffer holds {len(mem.buf_y)} > stream.buffer={bound}")
    train = data
    if algorithm.replay != "none":
        rx_l, ry_l, rx_u, ry_u = mem.replay()
        train = ClientData(torch.cat([data.x_l, rx_l]), torch.cat([data.y_l, ry_l]),
                           torch.cat([data.x_u, rx_u]), torch.cat([data.y_u, ry_u]), data.flip)
    prev = None
    if algorithm.uses_prev_model and mem.teacher:
        prev = copy.deepcopy(model).eval()
        prev.load_state_dict(mem.teacher)
        for p in prev.parameters():
            p.requires_grad_(False)
    return mem, train, prev


def finish(mem: StreamMemory, data: ClientData, new_state: dict[str, torch.Tensor],
           passes: int) -> dict[str, float]:
    """After training: account the round and add the memory to the state to persist.
    Returns the figures the client reports (``stream_*`` metrics)."""
    stage_bytes = sum(t.numel() * t.element_size() for t in (data.x_l, data.y_l, data.x_u, data.y_u))
    algo_bytes = sum(v.numel() * v.element_size() for k, v in new_state.items() if k.startswith("algo."))
    report = mem.account(data.num_examples, stage_bytes, algo_bytes, passes)
    new_state.update(mem.to_state())
    return report
