"""SemiFL's static batch norm (sBN) over data held in many places, as sums.

SemiFL's default (``sbn = 1`` in its code) recomputes the global model's BN running
statistics after every server step over the server's labeled set *and* every client's
data: one un-augmented pass in train mode, each batch normalised by its own statistics,
the running mean and (unbiased) variance the plain average over batches
(``momentum = None``). That average is a sum over batches, so each data holder can
compute its share alone and send three numbers per channel, never a sample: the sum of
the batch means, the sum of the batch variances and the batch count. The server adds
them (``server.bn_stats = "server_clients"``, see ``fedssl.server.bn_query``).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

MEAN, VAR, BATCHES = "mean_sum", "var_sum", "batches"


def bn_layers(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def bn_stat_sums(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Per BN layer ``name``: ``name.mean_sum`` and ``name.var_sum`` (float64, one entry
    per channel) and ``name.batches`` over the batches of ``x`` (normalised images) of at
    least 2 samples, under ``model``'s weights in train mode. ``model`` is not changed."""
    net = copy.deepcopy(model).train()
    sums: dict[str, np.ndarray] = {}
    for name, m in bn_layers(net):
        sums[f"{name}.{MEAN}"] = np.zeros(m.num_features)
        sums[f"{name}.{VAR}"] = np.zeros(m.num_features)
        sums[f"{name}.{BATCHES}"] = np.zeros(1)

        def take(_m: nn.Module, args: tuple, name: str = name) -> None:
            z = args[0].double().transpose(0, 1).reshape(args[0].shape[1], -1)  # channels x values
            sums[f"{name}.{MEAN}"] += z.mean(1).numpy()
            sums[f"{name}.{VAR}"] += z.var(1, unbiased=True).numpy()
            sums[f"{name}.{BATCHES}"] += 1

        m.register_forward_pre_hook(take)
    for i in range(0, len(x), batch_size):
        chunk = x[i:i + batch_size]
        if len(chunk) >= 2:  # one sample cannot be normalised in train mode
            net(chunk)
    return sums


def add_sums(total: dict[str, np.ndarray], part: dict[str, np.ndarray]) -> None:
    for k, v in part.items():
        total[k] += v


def check_sums(part: dict[str, np.ndarray], like: dict[str, np.ndarray]) -> str | None:
    """Why ``part`` (a client's reply) cannot be added to ``like``, or None."""
    if set(part) != set(like):
        return "its BN statistics name other layers"
    for k, v in part.items():
        if v.shape != like[k].shape:
            return f"{k} has shape {v.shape}, expected {like[k].shape}"
        if not np.all(np.isfinite(v)):
            return f"{k} is not finite"
        if (k.endswith(VAR) or k.endswith(BATCHES)) and np.any(v < 0):
            return f"{k} is negative"
    return None


@torch.no_grad()
def set_bn_stats(model: nn.Module, sums: dict[str, np.ndarray]) -> None:
    """Running mean and variance = the sums over their batch count (layers with no
    batch keep theirs), as BN's cumulative average would leave them."""
    for name, m in bn_layers(model):
        n = float(sums[f"{name}.{BATCHES}"][0])
        if n <= 0:
            continue
        assert m.running_mean is not None and m.running_var is not None and m.num_batches_tracked is not None
        m.running_mean.copy_(torch.from_numpy(sums[f"{name}.{MEAN}"] / n))
        m.running_var.copy_(torch.from_numpy(sums[f"{name}.{VAR}"] / n))
        m.num_batches_tracked.fill_(int(n))
