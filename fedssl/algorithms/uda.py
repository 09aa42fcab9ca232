"""UDA, Unsupervised Data Augmentation (Xie et al., 2020), with a persistent
per-client EMA teacher.

    L = CE(f(x_weak), y) + lambda_u * mean_b[ 1(max q_b >= tau) * KL(q~_b || softmax f(u_strong_b)) ]

where q_b = softmax(teacher(u_weak_b)) and q~_b is q_b sharpened with temperature T
(``client.uda.temperature``, 0.4 in the paper): q~ ∝ q^(1/T), i.e. softmax(logits / T).
The confidence mask uses the unsharpened q with ``client.uda.threshold``, 0.8 as in
UDA's paper and USB's config (``p_cutoff``). KL differs from USB's soft cross-entropy
only by the target's entropy (a constant), so the gradient is the same and the loss
reads 0 when the student matches the target. Training-signal annealing is omitted, as
in USB's UDA configs (``tsa_schedule: none``). The shared batch keys stay fedssl's (see
:mod:`fedssl.algorithms.fixmatch`).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedssl.algorithms.base import F, param, register, torch
from fedssl.algorithms.fixmatch import FixMatch, FixMatchParams


@dataclass(frozen=True)
class UDAParams(FixMatchParams):
    threshold: float = param(0.8, "confidence threshold of the mask, on the unsharpened q (UDA's p_cutoff)",
                             gt=0, le=1)
    temperature: float = param(0.4, "sharpening temperature T of the soft target", gt=0)


def sharpen(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """probs^(1/T), renormalised over classes (dim 1); T < 1 sharpens."""
    return torch.softmax(probs.log() / temperature, dim=1)


@register("uda")
class UDA(FixMatch):
    """FixMatch's step with the sharpened-KL unlabeled term."""

    params_class = UDAParams

    def unlabeled_loss(self, student_logits: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        target = sharpen(q, self.params.temperature)  # soft target
        return F.kl_div(F.log_softmax(student_logits, dim=1), target, reduction="none").sum(dim=1)
