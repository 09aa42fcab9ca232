"""Deterministic fault injection (``[faults]``) for tests and robustness studies.

A client listed in ``faults.clients`` misbehaves in a round with probability
``faults.rate``, from round ``faults.start_round`` on, drawn from (faults.seed, round,
client) so runs are reproducible:

- crash: raise inside the ClientApp (the node replies with an error);
- hang:  sleep past ``federation.round_timeout`` before replying;
- nan:   reply with NaN weights;
- shape: reply with the first weight tensor's last row dropped;
- scale: reply with global + faults.scale * (local - global).

``faults.mode`` is one mode for all listed clients, or a comma-separated list with
one mode per id in ``faults.clients`` (e.g. mode = "crash,shape", clients = "0,3").
"""

from __future__ import annotations

import time

import numpy as np
import torch

from fedssl.config import Config, fault_clients
from fedssl.seeding import derive_seed


class InjectedCrash(RuntimeError):
    pass


def fault_mode(cfg: Config, partition_id: int, server_round: int) -> str:
    """The fault this client injects this round ("none" if it behaves)."""
    f = cfg.faults
    ids = fault_clients(cfg)
    if f.mode == "none" or partition_id not in ids or server_round < f.start_round:
        return "none"
    modes = f.mode.split(",")
    mode = modes[ids.index(partition_id)] if len(modes) > 1 else modes[0]
    u = np.random.default_rng(derive_seed(f.seed, "fault", server_round, partition_id)).random()
    return mode if u < f.rate else "none"


def apply_fault(cfg: Config, partition_id: int, server_round: int,
                state: dict[str, torch.Tensor], global_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    mode = fault_mode(cfg, partition_id, server_round)
    if mode == "none":
        return state
    if mode == "crash":
        raise InjectedCrash(f"injected crash on client {partition_id} in round {server_round}")
    if mode == "hang":
        # the client starts at or after the round does, so this reply is always late; a
        # longer sleep only delays the run's end, which waits for the sleeping actor
        time.sleep(cfg.federation.round_timeout + 5)
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
