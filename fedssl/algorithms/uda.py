"""UDA, Unsupervised Data Augmentation (Xie et al., 2020), with a persistent
per-client EMA teacher.

    L = CE(f(x_weak), y) + lambda_u * mean_b[ 1(max q_b >= tau) * KL(q~_b || softmax f(u_strong_b)) ]

where q_b = softmax(teacher(u_weak_b)) and q~_b is q_b sharpened with temperature T
(``client.uda.temperature``, 0.4 in the paper): q~ ∝ q^(1/T), i.e. softmax(logits / T).
The confidence mask uses the unsharpened q with ``client.uda.threshold``. Default 0.95,
FixMatch's, not the UDA paper's (and USB's) 0.8: set ``client.uda.threshold = 0.8``
to reproduce UDA. KL differs from USB's soft cross-entropy
only by the target's entropy (a constant), so the gradient is the same and the loss
reads 0 when the student matches the target. Training-signal annealing is omitted.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedssl.algorithms.base import (F, StepMetrics, Algorithm, Batch, Params, RoundContext, lazy, nn, param,
                                    register, torch)

fmetrics = lazy("fedssl.metrics")


@dataclass(frozen=True)
class UDAParams(Params):
    threshold: float = param(0.95, "confidence mask threshold on the unsharpened prediction", gt=0, le=1)
    lambda_u: float = param(1.0, "weight of the unlabeled loss", ge=0)
    temperature: float = param(0.4, "sharpening temperature T of the soft target", gt=0)


def sharpen(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """probs^(1/T), renormalised over classes (dim 1); T < 1 sharpens."""
    return torch.softmax(probs.log() / temperature, dim=1)


@register("uda")
class UDA(Algorithm):
    params_class = UDAParams
    metric_keys = ("loss", "loss_x", "loss_u", "mask", "pl_acc")
    uses_teacher = True
    unlabeled_views = ("weak", "strong")

    def loss(self, model: nn.Module, batch: Batch, ctx: RoundContext) -> tuple[torch.Tensor, StepMetrics]:
        n_l = batch.y_l.numel()
        if not batch.x_u:  # client without unlabeled data: supervised only
            return self.supervised_only(model, batch, loss_u=0.0, mask=0.0)
        q, u_strong = self.weak_strong(model, batch, ctx)
        max_probs = q.max(dim=1).values
        mask = (max_probs >= self.params.threshold).float()
        pseudo_label = sharpen(q, self.params.temperature)  # soft target

        logits = model(torch.cat([batch.x_l[0], u_strong]))
        loss_x = self.supervised_ce(logits[:n_l], batch.y_l)
        log_student = F.log_softmax(logits[n_l:], dim=1)
        kl = F.kl_div(log_student, pseudo_label, reduction="none").sum(dim=1)
        loss_u = (kl * mask).mean()
        metrics: StepMetrics = {"loss_x": loss_x.detach(), "loss_u": loss_u.detach(), "mask": mask.mean()}
        pl_acc = fmetrics.pseudo_label_accuracy(pseudo_label.argmax(dim=1), batch.y_u, mask)  # hidden labels (-1) excluded
        if pl_acc is not None:
            metrics["pl_acc"] = pl_acc
        return loss_x + self.params.lambda_u * loss_u, metrics
