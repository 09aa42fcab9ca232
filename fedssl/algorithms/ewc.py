"""Elastic Weight Consolidation (Kirkpatrick et al., 2017) for incremental runs ([stream]):

    L = CE(f(x_weak), y) + lambda * sum_i F_i (theta_i - theta*_i)^2 / 2

with TARGET's constants and Fisher estimate (``methods/ewc.py``, zj-jayzhang/
Federated-Class-Continual-Learning): lamda = 1000; F is the mean over the client's
labeled batches of the squared gradients of the cross-entropy, clipped at fishermax =
1e-4, and merged over stages as F <- a * F_old + (1 - a) * F_new with a = the share of
the stages seen before (TARGET's known / total classes, equal tasks).

Federated as in TARGET: each client computes F_new on its current stage's labeled
samples with its local model after each round (the last one of a stage counts) and
folds it in when it enters the next stage. The anchor theta* is the previous stage's
global model (``ctx.prev_model``), where TARGET keeps the client's own last local
model: in a federation the global model is the one the stage ended with. In the first
stage there is no anchor and the loss is plain cross-entropy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedssl.algorithms.base import F, Algorithm, Batch, Params, RoundContext, StepMetrics, nn, param, register, torch


@dataclass(frozen=True)
class EWCParams(Params):
    lambda_ewc: float = param(1000.0, "weight of the EWC penalty (TARGET's lamda)", ge=0)
    fisher_max: float = param(1e-4, "clip of each Fisher entry (TARGET's fishermax)", gt=0)


def fisher_diagonal(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                    fisher_max: float) -> dict[str, torch.Tensor]:
    """TARGET's ``getFisherDiagonal``: mean over batches of squared CE gradients, clipped."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    batches = range(0, len(y), batch_size)
    for i in batches:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[i:i + batch_size]), y[i:i + batch_size]).backward()
        for n, p in params.items():
            if p.grad is not None:
                fisher[n] += p.grad.detach().pow(2)
    model.zero_grad(set_to_none=True)
    return {n: torch.clamp(f / max(1, len(batches)), max=fisher_max) for n, f in fisher.items()}


def ewc_penalty(model: nn.Module, fisher: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor]) -> torch.Tensor:
    """TARGET's ``compute_ewc``: sum_i F_i (theta_i - theta*_i)^2 / 2."""
    loss = sum((fisher[n] * (p - anchor[n]).pow(2)).sum() / 2 for n, p in model.named_parameters() if n in fisher)
    return loss if isinstance(loss, torch.Tensor) else torch.zeros(())


@register("ewc")
class EWC(Algorithm):
    params_class = EWCParams
    metric_keys = ("loss", "loss_x", "loss_ewc")
    uses_prev_model = True
    uses_unlabeled = False
    unlabeled_views = ()

    def begin_round(self, model: nn.Module, ctx: RoundContext, data: Any) -> None:
        """Entering a new stage: fold the last Fisher estimate of the earlier stage in."""
        st = ctx.state
        merged = int(st.get("merged", 0))  # stage estimates folded into F so far
        new_stage = int(st.get("new_stage", -1))  # the stage of the last F_new
        if 0 <= new_stage < ctx.stage and int(st.get("merged_through", -1)) < new_stage:
            a = merged / (merged + 1)
            for k in [k for k in st if k.startswith("new.")]:
                old = st.get("fisher." + k[4:])
                st["fisher." + k[4:]] = st[k] if old is None else a * old + (1 - a) * st[k]
            st["merged"], st["merged_through"] = torch.tensor(merged + 1), torch.tensor(new_stage)
        self._fisher = {k[7:]: v.to(ctx.device) for k, v in st.items() if k.startswith("fisher.")}
        self._anchor = ({n: p.detach() for n, p in ctx.prev_model.named_parameters()}
                        if ctx.prev_model is not None else {})

    def loss(self, model: nn.Module, batch: Batch, ctx: RoundContext) -> tuple[torch.Tensor, StepMetrics]:
        loss_x = self.supervised_ce(model(batch.x_l[0]), batch.y_l)
        if not (self._fisher and self._anchor):
            return loss_x, {"loss_x": loss_x.detach(), "loss_ewc": 0.0}
        loss_ewc = ewc_penalty(model, self._fisher, self._anchor)
        return loss_x + self.params.lambda_ewc * loss_ewc, {"loss_x": loss_x.detach(), "loss_ewc": loss_ewc.detach()}

    def end_round(self, model: nn.Module, ctx: RoundContext, data: Any) -> dict:
        """F_new of this round's local model on the stage's labeled samples."""
        from fedssl.data.augment import normalize

        if len(data.y_l):
            x = normalize(data.x_l.to(ctx.device))
            new = fisher_diagonal(model, x, data.y_l.to(ctx.device), self.cfg.batch_size, self.params.fisher_max)
            ctx.state.update({f"new.{n}": f.detach().cpu() for n, f in new.items()})
            ctx.state["new_stage"] = torch.tensor(ctx.stage)
        return {}
