"""ShrinkMatch (Yang et al., ICCV 2023, "Shrinking Class Space for Enhanced Certainty
in Semi-Supervised Learning"), with a persistent per-client EMA teacher.

Let q_b = softmax(teacher(u_weak_b)), y^_b = argmax q_b, mask_b = 1(max q_b >= tau).

Certain samples (mask_b = 1) get FixMatch's loss. For an uncertain sample, sort its
classes by q and drop the classes ranked 2, 3, ... just below the top-1, one at a
time, until the top-1's confidence renormalised over the remaining classes,

    q_(1) / (q_(1) + sum_{j >= c} q_(j)),    (classes ranked 2 .. c-1 removed)

reaches tau. On that shrunk class space S_b the student's strong-view logits are
renormalised and trained towards y^_b:

    L = CE(f(x_weak), y)
        + lambda_u * ( mean_b[ mask_b * CE(f(u_strong_b), y^_b) ]
                       + r * (1/B) sum_b[ (1 - mask_b) * valid_b * max q_b * CE_S_b(f(u_strong_b), y^_b) ] )

with the paper's two re-weighting principles, as its code (LiheYoung/ShrinkMatch,
``shrink_loss`` in CIFAR/shrinkmatch.py) implements them:
  1. sample reliability: each uncertain sample's shrunk loss is weighted by its
     *original* top-1 confidence max q_b (its confidence inside S_b is >= tau by
     construction, so it would not discriminate between samples);
  2. training progress: the whole shrunk term is weighted by r, an EMA of the
     fraction of certain samples (the mask ratio). r persists in the client's state
     across rounds; the reference smooths with 0.999 per step over ~1e3 steps per
     epoch, federated clients take far fewer steps, so we use 0.99.
valid_b is 0 when even keeping only the top-1 and the least likely class does not
reach tau (the reference's loop then ends at the last class and zeroes the loss).

Differences from the reference, on purpose: the pseudo-label comes from the EMA
teacher, not the student; the certain term uses FixMatch's hard label (the reference
uses the soft prediction); and the shrunk loss is computed on the main classifier,
as the reference's "no auxiliary head" ablation, because fedssl's models have one
head shared through federated averaging.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from fedssl.algorithms.base import (F, StepMetrics, Algorithm, Batch, Params, RoundContext, lazy, nn, param,
                                    register, torch)

fmetrics = lazy("fedssl.metrics")


@dataclass(frozen=True)
class ShrinkMatchParams(Params):
    threshold: float = param(0.95, "confidence threshold tau (certain samples; the shrunk space's target)",
                             gt=0, le=1)
    lambda_u: float = param(1.0, "weight of the unlabeled losses", ge=0)


class ShrunkSpace(NamedTuple):
    pseudo_label: torch.Tensor  # long [B]: the top-1 class (the same one ``keep`` ranks first)
    keep: torch.Tensor  # bool [B, C]: class kept in the shrunk space (top-1 always kept)
    confidence: torch.Tensor  # [B] top-1 probability renormalised over the kept classes
    valid: torch.Tensor  # bool [B]: the shrunk confidence reached the threshold
    removed: torch.Tensor  # long [B]: number of classes removed (ranks 2 .. removed+1)


def shrink_class_space(probs: torch.Tensor, threshold: float) -> ShrunkSpace:
    """For each row of ``probs`` [B, C], the smallest removal of the classes ranked
    just below the top-1 that lifts the top-1's renormalised confidence to
    ``threshold``. At least one class is removed; at most all but the last one."""
    b, c = probs.shape
    sorted_probs, order = probs.sort(dim=1, descending=True)
    top1 = sorted_probs[:, :1]
    tail = sorted_probs.flip(1).cumsum(1).flip(1)  # tail[:, j] = sum_{i >= j} p_(i)
    if c < 3:  # nothing can be removed without leaving the top-1 alone
        first_kept = torch.full((b,), c - 1, dtype=torch.long, device=probs.device)
        valid = torch.zeros(b, dtype=torch.bool, device=probs.device)
    else:
        # candidate c' = 2 .. C-1: keep rank 0 and ranks >= c'
        passes = top1 / (top1 + tail[:, 2:]) >= threshold
        valid = passes.any(dim=1)
        first_kept = torch.where(valid, passes.int().argmax(dim=1) + 2, c - 1)
    ranks = torch.arange(c, device=probs.device)
    keep_sorted = (ranks == 0) | (ranks >= first_kept[:, None])
    keep = torch.zeros_like(keep_sorted).scatter(1, order, keep_sorted)
    confidence = (top1 / (top1 + tail.gather(1, first_kept[:, None]))).squeeze(1)
    return ShrunkSpace(order[:, 0], keep, confidence, valid, first_kept - 1)


@register("shrinkmatch")
class ShrinkMatch(Algorithm):
    params_class = ShrinkMatchParams
    metric_keys = ("loss", "loss_x", "loss_u", "mask", "loss_shrink", "shrink_mask", "certain_ratio",
                   "removed", "pl_acc")
    uses_teacher = True
    unlabeled_views = ("weak", "strong")
    certain_ratio_momentum = 0.99  # EMA of the mask ratio (re-weighting principle 2)

    def certain_ratio(self, mask: torch.Tensor, ctx: RoundContext) -> float:
        """Update and return the EMA of the fraction of certain samples."""
        ratio = float(mask.mean())
        if "certain_ratio" in ctx.state:
            m = self.certain_ratio_momentum
            ratio = m * float(ctx.state["certain_ratio"]) + (1 - m) * ratio
        ctx.state["certain_ratio"] = torch.tensor([ratio], dtype=torch.float32)
        return ratio

    def loss(self, model: nn.Module, batch: Batch, ctx: RoundContext) -> tuple[torch.Tensor, StepMetrics]:
        n_l = batch.y_l.numel()
        if not batch.x_u:  # client without unlabeled data: supervised only
            return self.supervised_only(model, batch, loss_u=0.0, mask=0.0)
        q, u_strong = self.weak_strong(model, batch, ctx)
        shrunk = shrink_class_space(q, self.params.threshold)
        pseudo_label = shrunk.pseudo_label  # argmax q, tie-broken as in ``keep``
        max_probs = q.gather(1, pseudo_label[:, None]).squeeze(1)
        mask = (max_probs >= self.params.threshold).float()
        shrink_weight = (1 - mask) * shrunk.valid.float() * max_probs  # principle 1

        logits = model(torch.cat([batch.x_l[0], u_strong]))
        loss_x = self.supervised_ce(logits[:n_l], batch.y_l)
        logits_u = logits[n_l:]
        loss_u = (F.cross_entropy(logits_u, pseudo_label, reduction="none") * mask).mean()
        shrunk_logits = logits_u.masked_fill(~shrunk.keep, float("-inf"))
        loss_shrink = (F.cross_entropy(shrunk_logits, pseudo_label, reduction="none")
                       * shrink_weight).mean()
        ratio = self.certain_ratio(mask, ctx)  # principle 2

        uncertain = 1 - mask
        metrics = {"loss_x": loss_x.detach(), "loss_u": loss_u.detach(),
                   "loss_shrink": loss_shrink.detach(), "mask": mask.mean(),
                   "shrink_mask": (uncertain * shrunk.valid.float()).mean(),
                   "certain_ratio": ratio}
        if uncertain.sum() > 0:
            metrics["removed"] = float((shrunk.removed.float() * uncertain).sum() / uncertain.sum())
        pl_acc = fmetrics.pseudo_label_accuracy(pseudo_label, batch.y_u, mask)  # hidden labels (-1) excluded
        if pl_acc is not None:
            metrics["pl_acc"] = pl_acc
        return loss_x + self.params.lambda_u * (loss_u + ratio * loss_shrink), metrics
