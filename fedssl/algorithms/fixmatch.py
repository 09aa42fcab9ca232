"""FixMatch (Sohn et al., 2020) with a persistent per-client EMA teacher.

    L = CE(f(x_weak), y) + lambda_u * mean_b[ 1(max q_b >= tau) * CE(f(u_strong_b), argmax q_b) ]

where q_b = softmax(teacher(u_weak_b)). The teacher is the client's EMA of its
student; how it meets each new global model is shared (``fedssl.training``).
Defaults: the paper's tau = 0.95 and lambda_u = 1. Differences from the paper, all in the
shared ``[client]`` keys so that every algorithm runs at the same budget: labeled batch
``client.batch_size`` 32 (paper 64) and ``client.uratio`` 4 (paper mu = 7), because
clients hold a few hundred samples; pseudo-labels come from the client's EMA teacher
(``client.ema_decay`` 0.99 per step, ``client.teacher_sync`` 0.5), where the paper
labels with the model being trained, because a client trains only a few steps per
round and the teacher carries its averaged model across them.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedssl.algorithms.base import (Algorithm, Batch, F, PseudoLabelParams, RoundContext, StepMetrics, lazy, nn,
                                    register, torch)

metrics = lazy("fedssl.metrics")


@dataclass(frozen=True)
class FixMatchParams(PseudoLabelParams):
    """FixMatch's knobs are the family's: ``threshold`` and ``lambda_u``."""


@register("fixmatch")
class FixMatch(Algorithm):
    params_class = FixMatchParams
    metric_keys = ("loss", "loss_x", "loss_u", "mask", "pl_acc")
    uses_teacher = True
    unlabeled_views = ("weak", "strong")

    def loss(self, model: nn.Module, batch: Batch, ctx: RoundContext) -> tuple[torch.Tensor, StepMetrics]:
        if not batch.x_u:  # a client with labels only
            return self.supervised_only(model, batch, loss_u=0.0, mask=0.0)
        q, u_strong = self.weak_strong(model, batch, ctx)
        max_probs, pseudo_label = q.max(dim=1)
        mask = (max_probs >= self.params.threshold).float()

        n_l = batch.y_l.numel()
        logits = model(torch.cat([batch.x_l[0], u_strong]))
        loss_x = self.supervised_ce(logits[:n_l], batch.y_l)
        loss_u = (self.unlabeled_loss(logits[n_l:], q) * mask).mean()
        out: StepMetrics = {"loss_x": loss_x.detach(), "loss_u": loss_u.detach(), "mask": mask.mean()}
        pl_acc = metrics.pseudo_label_accuracy(pseudo_label, batch.y_u, mask)  # hidden labels (-1) excluded
        if pl_acc is not None:
            out["pl_acc"] = pl_acc
        return loss_x + self.params.lambda_u * loss_u, out

    def unlabeled_loss(self, student_logits: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """Per-sample loss of the strong view against the teacher's weak-view
        probabilities ``q``; FixMatch's is cross-entropy to the hard pseudo-label."""
        return F.cross_entropy(student_logits, q.argmax(dim=1), reduction="none")
