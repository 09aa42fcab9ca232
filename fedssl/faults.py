"""Deterministic fault injection (``[faults]``) for tests and robustness studies.

A client listed in ``faults.clients`` misbehaves in a round with probability
``faults.rate``, drawn from (faults.seed, round, client) so runs are reproducible:

- crash: raise inside the ClientApp (the node replies with an error);
- hang:  sleep past ``federation.round_timeout`` before replying;
- nan:   reply with NaN weights;
- shape: reply with the first weight tensor's last row dropped;
- scale: reply with global + faults.scale * (local - global).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from fedssl.config import Config, fault_clients
from fedssl.training import derive_seed


class InjectedCrash(RuntimeError):
    pass


def is_faulty(cfg: Config, partition_id: int, server_round: int) -> bool:
    f = cfg.faults
    if f.mode == "none" or partition_id not in fault_clients(cfg):
        return False
    u = np.random.default_rng(derive_seed(f.seed, "fault", server_round, partition_id)).random()
    return bool(u < f.rate)


def apply_fault(cfg: Config, partition_id: int, server_round: int,
                state: dict[str, torch.Tensor], global_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if not is_faulty(cfg, partition_id, server_round):
        return state
    mode = cfg.faults.mode
    if mode == "crash":
        raise InjectedCrash(f"injected crash on client {partition_id} in round {server_round}")
    if mode == "hang":
        time.sleep(cfg.federation.round_timeout * 2 + 5)
        return state
    out = {k: v.clone() for k, v in state.items()}
    first = next(k for k, v in out.items() if v.is_floating_point())
    if mode == "nan":
        out[first] = torch.full_like(out[first], float("nan"))
    elif mode == "shape":
        out[first] = out[first][:-1].clone()
    elif mode == "scale":
        for k, v in out.items():
            if v.is_floating_point():
                out[k] = global_state[k] + cfg.faults.scale * (v - global_state[k])
    return out
