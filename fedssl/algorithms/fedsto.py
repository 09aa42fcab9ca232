"""FedSTO (Kim et al., NeurIPS 2023) adapted from detection to classification.

FedSTO's stages, with the server holding the only labels:

1. Warm-up: server-only supervised training (``server.warmup_steps``,
   ``fedssl.server_training``).
2. Selective training, rounds 1 .. ceil(client.fedsto.selective_fraction x rounds): clients
   train the backbone only; the head is frozen at the received global head (so the
   aggregate's head is the global head); the server trains everything on its labels
   after aggregation.
3. Orthogonally enhanced full-parameter training, the remaining rounds: clients train
   everything, and clients and server add the SRIP penalty (Bansal et al., 2018)

       R = client.fedsto.ortho_lambda * d(r) * sum over W of sigma_max(W W^T - I)^p

   over the classification head W (``ortho_layers = "head"``, the default) or every
   weight matrix, convs reshaped to (C_out, C_in k k) (``"all"``), each with the smaller
   dimension as rows (10 classes x 128 features gives the 10 x 10 W W^T: the Gram
   matrix of the smaller side, whose identity target a wide head can meet). sigma_max is estimated by SRIP's two-step
   power iteration from a random start vector. p = 1 and d = 1 are the paper's form
   (``srip_form = "sigma"``, ``ortho_decay = "constant"``); SRIP's public code squares
   sigma (``"sigma_sq"``) and cuts its weight in steps (``"srip"``: x1e-3, x1e-4, x1e-6,
   then 0 after 10, 25, 35 and 60 % of training, its epochs 20, 50, 70 and 120 of 200,
   mapped here onto phase 2's rounds).

Client loss (both phases): FixMatch-style pseudo-labelling by the client's local EMA
teacher (``client.ema_decay`` per step), threshold ``client.fedsto.threshold`` on the
teacher's weak-view prediction, CE of the student on the strong view, plus the
supervised CE when the client also holds labels (mixed case):

    L = CE(f(x_weak), y) + lambda_u * mean_b[1(max q_b >= tau) CE(f(u_strong_b), argmax q_b)] + R

Choices FedSTO leaves open (there is no official training code), documented here:
- the teacher restarts from the received global model every round (student = teacher =
  global model at the round's start, one reading of the paper): this
  algorithm's default ``client.teacher_sync = 0``. The other reading, a teacher that
  persists across the client's rounds, is ``teacher_sync = 1``; the shared default 0.5
  blends them. Measured on the first run's split, 3 seeds: 0.710 (restart) against
  0.706 (persist) at 20 rounds; 0.709, 0.702 and 0.710 (blend) at 10 rounds; all within
  the seeds' spread (docs/results/labels_at_server.md);
- the phase switch is a fraction of the rounds (default 0.5; the paper's detection
  schedule spends roughly half its federated rounds in selective training); phase 1
  freezes the head only (the paper's "selective training" trains the backbone, and a
  classifier's head is what stands for the detector's neck and head);
- the orthogonality penalty covers the head by default (the paper does not publish the
  layer set; ``ortho_layers = "all"`` is SRIP's sum over every weight matrix), lambda 0.01;
- the penalty is lambda x sigma with a constant lambda, as FedSTO's paper writes SRIP;
  SRIP's code form (sigma^2, stepped decay) is the pair of options above. At 20 rounds,
  3 seeds: the code's form ties the paper's (0.710 both), every weight matrix measures
  +0.3 points over the head alone, within the seeds' spread;
- the EMA decay 0.99 per step suits federated rounds of tens of steps (the Efficient
  Teacher lineage uses 0.999 over much longer local training).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fedssl.algorithms.base import (Algorithm, Batch, F, PseudoLabelParams, RoundContext, StepMetrics, nn, param,
                                    register, torch, train_head)


@dataclass(frozen=True)
class FedSTOParams(PseudoLabelParams):
    selective_fraction: float = param(0.5, "fraction of rounds in the selective (backbone-only) phase",
                                      ge=0, le=1)
    ortho_lambda: float = param(0.01, "weight of the SRIP orthogonality penalty (phase 2)", ge=0)
    ortho_layers: str = param("head", "the weights the SRIP penalty covers: the classifier head or every weight "
                              "matrix (all)", choices=("head", "all"))
    srip_form: str = param("sigma", "the penalty per weight: sigma_max (sigma, FedSTO's paper) or its square "
                           "(sigma_sq, SRIP's code)", choices=("sigma", "sigma_sq"))
    ortho_decay: str = param("constant", "the penalty's weight over phase 2: constant (FedSTO's paper) or SRIP's "
                             "code's steps (srip: x1e-3, 1e-4, 1e-6, 0 after 10, 25, 35, 60 %)",
                             choices=("constant", "srip"))

# SRIP's code (epochs 20 / 50 / 70 / 120 of 200): the weight's factor until each share of training
SRIP_STEPS = ((0.10, 1.0), (0.25, 1e-3), (0.35, 1e-4), (0.60, 1e-6))


@register("fedsto")
class FedSTO(Algorithm):
    params_class = FedSTOParams
    metric_keys = ("loss", "loss_x", "loss_u", "mask", "ortho", "pl_acc")
    uses_teacher = True
    unlabeled_views = ("weak", "strong")
    client_defaults = {"teacher_sync": 0.0}  # the local teacher restarts from each received model

    def selective(self, server_round: int) -> bool:
        """True in phase 1 (backbone-only training)."""
        return server_round <= self.phase1_rounds()

    def phase1_rounds(self) -> int:
        return math.ceil(self.params.selective_fraction * self.rounds)

    def ortho_weight(self, server_round: int) -> float:
        """The penalty's weight in ``server_round`` of phase 2."""
        lam = self.params.ortho_lambda
        if self.params.ortho_decay == "constant":
            return lam
        done = (server_round - self.phase1_rounds()) / max(self.rounds - self.phase1_rounds(), 1)
        return next((lam * f for share, f in SRIP_STEPS if done <= share + 1e-9), 0.0)

    def begin_round(self, model: nn.Module, ctx: RoundContext, data: Any) -> None:
        train_head(model, not self.selective(ctx.server_round))

    def end_round(self, model: nn.Module, ctx: RoundContext, data: Any) -> dict:
        train_head(model, True)
        return {}

    def penalty(self, model: nn.Module, server_round: int) -> torch.Tensor | None:
        lam = 0.0 if self.selective(server_round) else self.ortho_weight(server_round)
        if lam <= 0:
            return None
        weights = [head_weight(model)] if self.params.ortho_layers == "head" else all_weights(model)
        power = 2 if self.params.srip_form == "sigma_sq" else 1
        return lam * torch.stack([srip(w) ** power for w in weights]).sum()

    def server_penalty(self, model: nn.Module, server_round: int) -> torch.Tensor | None:
        """The same penalty in the server's training step (phase 2 only)."""
        return self.penalty(model, server_round) if server_round > 0 else None

    def loss(self, model: nn.Module, batch: Batch, ctx: RoundContext) -> tuple[torch.Tensor, StepMetrics]:
        n_l = batch.y_l.numel()
        reg = self.penalty(model, ctx.server_round)
        if not batch.x_u:
            loss = self.supervised_ce(model(batch.x_l[0]), batch.y_l)
            out = loss if reg is None else loss + reg
            return out, {"loss_x": loss.item(), "loss_u": 0.0, "mask": 0.0}
        u_weak, u_strong = batch.x_u
        q = self.pseudo_probs(model, u_weak, ctx)
        max_probs, pseudo = q.max(dim=1)
        mask = (max_probs >= self.params.threshold).float()
        logits = model(torch.cat([batch.x_l[0], u_strong]))
        loss_x = self.supervised_ce(logits[:n_l], batch.y_l)
        loss_u = (F.cross_entropy(logits[n_l:], pseudo, reduction="none") * mask).mean()
        loss = loss_x + self.params.lambda_u * loss_u
        metrics = {"loss_x": loss_x.item(), "loss_u": loss_u.item(), "mask": mask.mean().item(),
                   "ortho": reg.item() if reg is not None else 0.0}
        if batch.y_u is not None and mask.sum() > 0:
            metrics["pl_acc"] = (((pseudo == batch.y_u).float() * mask).sum() / mask.sum()).item()
        return (loss if reg is None else loss + reg), metrics


def rows_first(w: torch.Tensor) -> torch.Tensor:
    """``w`` as a matrix (C_out, rest), the smaller dimension as rows."""
    w = w.reshape(w.shape[0], -1)
    return w if w.shape[0] <= w.shape[1] else w.t()


def head_weight(model: nn.Module) -> torch.Tensor:
    """The classifier weight with the smaller dimension as rows."""
    return rows_first(model.get_submodule("head").get_parameter("weight"))


def all_weights(model: nn.Module) -> list[torch.Tensor]:
    """Every weight matrix (linear, and conv kernels reshaped), smaller dimension as rows."""
    return [rows_first(p) for p in model.parameters() if p.ndim >= 2]


def srip(w: torch.Tensor, iters: int = 2) -> torch.Tensor:
    """SRIP's estimate of sigma_max(W W^T - I) (W: rows <= columns) by power
    iteration from a random vector, differentiable in W (Bansal et al., 2018)."""
    m = w @ w.t() - torch.eye(w.shape[0], device=w.device, dtype=w.dtype)
    v = torch.randn(w.shape[0], 1, device=w.device, dtype=w.dtype)
    for _ in range(iters - 1):
        v = F.normalize(m @ v, dim=0)
    u = m @ v
    return u.norm() / v.norm().clamp_min(1e-12)
