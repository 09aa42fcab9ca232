"""Server-side learning on the server's own labeled set (labels-at-server setting).

SemiFL's alternate training (Diao et al., 2022): after every aggregation the server
fine-tunes the aggregate on its labeled samples and that fine-tuned model is the new
global model; a warm-up on the same data precedes round 1. It is also the reference
the next round's client updates are measured against by a strategy with server-side
optimisation (FedAvgM's momentum, FedOpt's moments), as in SemiFL: the strategy
wrapper sets it before every round (``strategies/reference.py``). This module is the core of
that step (torch only, no Flower): the server loop calls :meth:`ServerTrainer.step`
through one hook.

Choices (SemiFL's code unless noted):

- SGD, momentum 0.9, Nesterov, weight decay ``client.weight_decay``, gradient norm
  clipped at 1; the learning rate ``server.train_lr`` follows ``client.lr_schedule``
  over the rounds (SemiFL shares one cosine schedule between server and clients).
- Steps, not epochs (``server.train_steps`` per round, ``server.warmup_steps`` once):
  with 10 labels per class an "epoch" is a handful of steps, so a step count is the
  knob that means the same thing at 10 and 50 labels per class.
- Weak augmentation (translation + flip) of the labeled batch, as the clients'
  labeled loss does.
- The optimizer's momentum buffers persist across rounds (SemiFL keeps the server
  optimizer state); batches and augmentations are drawn from a generator seeded by
  ``(run.seed, "server-train", round)``, so the only state a checkpoint must carry is
  the momentum buffers (:meth:`state_dict` returns plain numpy arrays and ints).
- Static batch norm (sBN): a model with batch norm gets its running statistics
  recomputed after training with one un-augmented pass over the server's labeled data
  in train mode with cumulative averaging (SemiFL's "server only" sBN), so the
  clients' averaged BN buffers never reach the global model. The ``cnn`` model has no
  batch norm; ``resnet18`` has.
- Penalties: the algorithm's hook ``Algorithm.server_penalty(model, server_round)``
  (None by default; FedSTO adds its orthogonality term in phase 2) is added to the
  server's loss.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedssl.config import Config
from fedssl.data.augment import normalize, weak
from fedssl.optim import SGD
from fedssl.threads import one_thread
from fedssl.seeding import derive_seed
from fedssl.training import build_algorithm, scheduled_lr

Penalty = Callable[[nn.Module, int], "torch.Tensor | None"]


class ServerTrainer:
    """Trains the global model on the server's labeled set ``x`` (uint8 NCHW), ``y``."""

    def __init__(self, cfg: Config, x: torch.Tensor, y: torch.Tensor,
                 penalty: Penalty | None = None, flip: bool = True) -> None:
        self.cfg, self.x, self.y = cfg, x, y.long()
        self.penalty, self.flip = penalty, flip
        self.momentum: dict[str, np.ndarray] = {}  # optimizer buffers by parameter name
        self.steps_done = 0

    def __len__(self) -> int:
        return len(self.y)

    def lr(self, server_round: int) -> float:
        return scheduled_lr(self.cfg.server.train_lr, self.cfg, server_round)

    def step(self, model: nn.Module, server_round: int, steps: int | None = None) -> dict[str, float]:
        """Train ``model`` in place for ``steps`` (default ``server.train_steps``);
        ``server_round`` 0 is the warm-up (``server.warmup_steps``). On one intra-op
        thread, so the bits do not depend on the machine (:mod:`fedssl.threads`)."""
        with one_thread():
            return self._step(model, server_round, steps)

    def _step(self, model: nn.Module, server_round: int, steps: int | None) -> dict[str, float]:
        s = self.cfg.server
        if steps is None:
            steps = s.warmup_steps if server_round == 0 else s.train_steps
        if steps <= 0 or len(self) == 0:
            return {}
        gen = torch.Generator().manual_seed(derive_seed(self.cfg.run.seed, "server-train", server_round))
        params = dict(model.named_parameters())
        opt = SGD(list(params.values()), lr=self.lr(max(server_round, 1)), momentum=0.9,
                  nesterov=True, weight_decay=self.cfg.client.weight_decay)
        self._load_momentum(opt, params)
        bs = min(s.train_batch_size, len(self))
        model.train()
        total = 0.0
        # augmentations draw from torch's global RNG: fork it so the server loop's own
        # RNG stream (checkpointed separately) is not disturbed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.cfg.run.seed, "server-aug", server_round))
            perm, pos = torch.randperm(len(self), generator=gen), 0
            for _ in range(steps):
                if pos + bs > len(perm):
                    perm, pos = torch.randperm(len(self), generator=gen), 0
                idx = perm[pos:pos + bs]
                pos += bs
                x = normalize(weak(self.x[idx], self.flip))
                loss = F.cross_entropy(model(x), self.y[idx])
                reg = self.penalty(model, server_round) if self.penalty else None
                if reg is not None:
                    loss = loss + reg
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                total += loss.item()
        self._save_momentum(opt, params)
        self.steps_done += steps
        recompute_bn_stats(model, normalize(self.x.clone()))
        return {"server_loss": total / steps, "server_steps": float(steps)}

    # -- optimizer state (checkpointed) ----------------------------------------------
    def _load_momentum(self, opt: SGD, params: dict[str, nn.Parameter]) -> None:
        for name, p in params.items():
            if name in self.momentum:
                opt.state[p]["momentum_buffer"] = torch.from_numpy(self.momentum[name].copy()).to(p.device)

    def _save_momentum(self, opt: SGD, params: dict[str, nn.Parameter]) -> None:
        for name, p in params.items():
            buf = opt.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                self.momentum[name] = buf.detach().cpu().numpy().copy()

    def state_dict(self) -> dict[str, Any]:
        """Plain arrays and ints (fits torch.save and safetensors + JSON alike)."""
        return {"steps_done": int(self.steps_done),
                "momentum": {k: v.copy() for k, v in self.momentum.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps_done = int(state.get("steps_done", 0))
        self.momentum = {k: np.asarray(v, dtype=np.float32).copy()
                         for k, v in state.get("momentum", {}).items()}


@torch.no_grad()
def recompute_bn_stats(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> bool:
    """SemiFL's static batch norm: reset every BN layer's running statistics and
    recompute them with cumulative averaging over ``x`` (one pass, train mode, no
    augmentation). Returns False (and does nothing) for a model without BN."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or len(x) < 2:
        return False
    saved = [(m, m.momentum) for m in bns]
    was_training = model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.train()
    for i in range(0, len(x), batch_size):
        chunk = x[i:i + batch_size]
        if len(chunk) >= 2:
            model(chunk)
    for m, mom in saved:
        m.momentum = mom
    model.train(was_training)
    return True


def server_labeled_data(train_x: np.ndarray, train_y: np.ndarray,
                        idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The server's labeled set as (uint8 NCHW, int64) tensors from NHWC arrays."""
    x = torch.from_numpy(np.ascontiguousarray(train_x[idx].transpose(0, 3, 1, 2)))
    return x, torch.from_numpy(train_y[idx].astype(np.int64))


def build_server_trainer(cfg: Config, train_x: np.ndarray, train_y: np.ndarray,
                         idx: np.ndarray) -> ServerTrainer | None:
    """The trainer for a run whose partition gives the server ``idx`` (None when the
    server holds no labels). The algorithm may contribute a penalty (FedSTO)."""
    if len(idx) == 0:
        return None
    x, y = server_labeled_data(train_x, train_y, idx)
    return ServerTrainer(cfg, x, y, build_algorithm(cfg).server_penalty)
