"""Learning without Forgetting (Li & Hoiem, 2016) with the previous stage's global model
as the old network, for incremental runs ([stream]):

    L = CE(f(x_weak), y) + lambda_kd * KD(f(x), f_old(x)),
    KD(z, z_old) = -mean_b sum_c softmax(z_old / T)_c * log_softmax(z / T)_c

as TARGET's ``methods/lwf.py`` (``_KD_loss``, T = 2, lamda = 3; zj-jayzhang/
Federated-Class-Continual-Learning). Domain-incremental: old and new stages share the
10 outputs, so the distillation covers all logits (TARGET's class-incremental split of
the head into old / new outputs does not apply). Distillation needs no labels, so x is
the labeled batch and, here, the client's unlabeled batch (weak views) too; the
cross-entropy uses labels only. f_old is the global model the client received when it
entered the stage (``ctx.prev_model``); in the first stage there is none and the loss
is plain cross-entropy.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedssl.algorithms.base import F, Algorithm, Batch, Params, RoundContext, StepMetrics, nn, param, register, torch


@dataclass(frozen=True)
class LwFParams(Params):
    temperature: float = param(2.0, "distillation temperature T (TARGET's T)", gt=0)
    lambda_kd: float = param(3.0, "weight of the distillation term (TARGET's lamda)", ge=0)


def kd_loss(logits: torch.Tensor, old_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """TARGET's ``_KD_loss``: soft cross-entropy of the old model's tempered softmax, per sample."""
    return soft_ce(logits, F.softmax(old_logits / temperature, dim=1), temperature)


def soft_ce(logits: torch.Tensor, q: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy of the target distribution ``q`` against the tempered softmax, per sample."""
    return -(q * F.log_softmax(logits / temperature, dim=1)).sum() / logits.shape[0]


@register("lwf")
class LwF(Algorithm):
    params_class = LwFParams
    metric_keys = ("loss", "loss_x", "loss_kd")
    uses_prev_model = True
    unlabeled_views = ("weak",)

    def loss(self, model: nn.Module, batch: Batch, ctx: RoundContext) -> tuple[torch.Tensor, StepMetrics]:
        x = torch.cat([batch.x_l[0], *batch.x_u[:1]])
        logits = model(x)
        n_l = batch.y_l.numel()
        loss_x = self.supervised_ce(logits[:n_l], batch.y_l)
        if ctx.prev_model is None:
            return loss_x, {"loss_x": loss_x.detach(), "loss_kd": 0.0}
        with torch.no_grad():
            old = ctx.prev_model(x)
        loss_kd = kd_loss(logits, old, self.params.temperature)
        return loss_x + self.params.lambda_kd * loss_kd, {"loss_x": loss_x.detach(), "loss_kd": loss_kd.detach()}
