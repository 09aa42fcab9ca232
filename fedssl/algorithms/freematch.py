"""FreeMatch (Wang et al., ICLR 2023, "FreeMatch: Self-adaptive Thresholding for
Semi-supervised Learning"), as USB implements it (microsoft/Semi-supervised-learning,
``semilearn/algorithms/freematch/``), with a persistent per-client EMA teacher.

Let q_b = softmax(teacher(u_weak_b)) over C classes and y^_b = argmax q_b. Before each
step's mask, self-adaptive thresholding (SAT) moves three statistics by an EMA of
momentum m (``client.freematch.ema_p``) towards the batch's:

    tau_t  <- m * tau_t  + (1 - m) * mean_b max q_b       the global threshold
    p~_t   <- m * p~_t   + (1 - m) * mean_b q_b           [C] the class-wise confidence
    h~_t   <- m * h~_t   + (1 - m) * hist_b(y^_b) / B     [C] the pseudo-label histogram

starting from tau_0 = 1/C and p~_0 = h~_0 = uniform. The class-wise threshold and the mask:

    tau_t(c) = tau_t * p~_t(c) / max_c' p~_t(c'),      mask_b = 1(max q_b >= tau_t(y^_b))

The self-adaptive fairness term, on the strong-view predictions p_b = softmax(f(u_strong_b))
of the masked samples S only, with mean p- = mean_{b in S} p_b, histogram h- of their
argmax (normalised to sum 1), SumNorm(x) = x / sum(x), and 1/0 read as 0:

    L_f = sum_c SumNorm(p~_t / h~_t)(c) * log SumNorm(p- / h-)(c)     (0 when S is empty)

(the negative cross-entropy: minimising it pushes the selected predictions' mean
towards the class spread the model expects, away from a few classes). The loss:

    L = CE(f(x_weak), y) + lambda_u * mean_b[ mask_b * CE(f(u_strong_b), y^_b) ] + lambda_e * L_f

Defaults, from USB (42 FreeMatch configs under ``config/``; ``train.py``; the
arguments of ``freematch.py``): ``ema_p`` 0.999 (every config); ``lambda_e`` 0.001, the
configs' ``ent_loss_ratio`` (every config; ``freematch.py``'s argument default 0.01 is
used by none); ``lambda_u`` 1.0, ``train.py``'s ``ulb_loss_ratio`` (no config sets it);
``use_quantile`` false (the argument default; the classic-CV configs set it false);
``clip_thresh`` false (the argument default; only the three SVHN configs set it true).
Hard pseudo-labels, as every config sets ``hard_label: True``; USB's ``T`` (0.5) only
sharpens soft labels, so neither is a key here. The shared ``[client]`` keys keep
fedssl's defaults, as ``fixmatch`` does, so the two compare at the same budget (lr 0.03,
momentum 0.9 and weight decay 5e-4 are USB's classic-CV values; its batch 64 and
uratio 7 are not).

Differences from the reference, and why:

- q_b comes from the client's persistent EMA teacher in eval mode (fedssl's FixMatch
  convention, ``fedssl.training``), not from the student's weak-view logits of the same
  train-mode forward: FreeMatch then differs from ``fixmatch`` by its thresholds and
  its fairness term only. ``client.ema_decay = 0`` with ``client.teacher_sync = 0``
  makes the teacher the current student (in eval mode), the nearest to USB.
- SAT's statistics belong to the client: they live in its state store across rounds
  (and ``--resume``), are never averaged by the server, and a client starts from
  USB's initial values the first round it trains. USB keeps one set per run (gathered
  over its GPUs); federated clients hold different class mixes, which the class-wise
  thresholds then follow. The EMA moves once per local step as in USB, whose runs
  take about 1e6 steps; a client takes tens per round, so tau_t climbs from 1/C more
  slowly here (the reference's 0.999 is kept: no other value was measured better).
- L_f is computed with mask weights instead of USB's boolean selection and its
  ``if mask.sum() > 0`` branch: the same value and gradient (tests/test_freematch.py
  checks both), and no branch on a device tensor, which would wait for the device.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedssl.algorithms.base import (F, StepMetrics, Algorithm, Batch, Params, RoundContext, lazy, nn, param,
                                    register, torch)

fmetrics = lazy("fedssl.metrics")

QUANTILE = 0.8  # use_quantile: USB's torch.quantile(max_probs, 0.8)
CLIP = 0.95  # clip_thresh: USB clips tau_t to [0, 0.95]


@dataclass(frozen=True)
class FreeMatchParams(Params):
    ema_p: float = param(0.999, "EMA momentum of the self-adaptive thresholds' statistics, per local step",
                         ge=0, lt=1)
    lambda_u: float = param(1.0, "weight of the unlabeled loss", ge=0)
    lambda_e: float = param(0.001, "weight of the self-adaptive fairness term L_f (USB's ent_loss_ratio)",
                            ge=0)
    use_quantile: bool = param(False, "global threshold from the batch's 0.8-quantile of max q, not its mean")
    clip_thresh: bool = param(False, "clip the global threshold to at most 0.95")


def update_thresholds(state: dict[str, torch.Tensor], probs: torch.Tensor, p: FreeMatchParams) -> None:
    """SAT's EMA step, in place on ``state`` (initialised on first use) from the
    teacher's probabilities ``probs`` [B, C]: ``global_threshold`` tau_t [],
    ``class_probs`` p~_t [C], ``label_hist`` h~_t [C]."""
    c, m = probs.shape[1], p.ema_p
    uniform = probs.new_full((c,), 1.0 / c)
    tau = state.get("global_threshold", uniform.mean()).to(probs)
    class_probs = state.get("class_probs", uniform).to(probs)
    label_hist = state.get("label_hist", uniform).to(probs)
    max_probs, pseudo_label = probs.max(dim=1)
    batch_tau = torch.quantile(max_probs, QUANTILE) if p.use_quantile else max_probs.mean()
    tau = m * tau + (1 - m) * batch_tau
    if p.clip_thresh:
        tau = tau.clamp(0.0, CLIP)
    hist = torch.bincount(pseudo_label, minlength=c).to(probs)
    state["global_threshold"] = tau
    state["class_probs"] = m * class_probs + (1 - m) * probs.mean(dim=0)
    state["label_hist"] = m * label_hist + (1 - m) * hist / hist.sum()


def self_adaptive_mask(probs: torch.Tensor, state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask [B] float, pseudo-label [B]): max q_b >= tau_t * p~_t(y^_b) / max p~_t."""
    max_probs, pseudo_label = probs.max(dim=1)
    class_probs = state["class_probs"]
    class_threshold = state["global_threshold"] * class_probs / class_probs.max()
    return (max_probs >= class_threshold[pseudo_label]).to(probs.dtype), pseudo_label


def _sum_norm(x: torch.Tensor) -> torch.Tensor:
    return x / x.sum().clamp_min(1e-12)  # an all-zero x (nothing selected) stays zero, without 0/0


def _inverse(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x > 0, 1.0 / x, torch.zeros_like(x))  # USB: 1/x with inf replaced by 0


def fairness_loss(logits_s: torch.Tensor, mask: torch.Tensor, class_probs: torch.Tensor,
                  label_hist: torch.Tensor) -> torch.Tensor:
    """L_f over the strong-view logits [B, C] of the masked samples (``mask`` [B] of 0/1);
    0 when none is masked. Gradient flows through the mean prediction only."""
    probs_s = logits_s.softmax(dim=1)
    w = mask.to(probs_s.dtype)
    n = w.sum().clamp_min(1.0)
    hist_s = (F.one_hot(probs_s.argmax(dim=1), probs_s.shape[1]).to(probs_s.dtype) * w[:, None]).sum(0) / n
    mean_s = (probs_s * w[:, None]).sum(0) / n
    target = _sum_norm(class_probs * _inverse(label_hist))
    pred = _sum_norm(mean_s * _inverse(hist_s))
    return (target * torch.log(pred + 1e-12)).sum() * (w.sum() > 0).to(probs_s.dtype)


@register("freematch")
class FreeMatch(Algorithm):
    params_class = FreeMatchParams
    metric_keys = ("loss", "loss_x", "loss_u", "loss_f", "mask", "global_threshold", "pl_acc")
    uses_teacher = True
    unlabeled_views = ("weak", "strong")

    def loss(self, model: nn.Module, batch: Batch, ctx: RoundContext) -> tuple[torch.Tensor, StepMetrics]:
        if not batch.x_u:  # a client with labels only
            return self.supervised_only(model, batch, loss_u=0.0, loss_f=0.0, mask=0.0)
        q, u_strong = self.weak_strong(model, batch, ctx)
        update_thresholds(ctx.state, q, self.params)
        mask, pseudo_label = self_adaptive_mask(q, ctx.state)

        n_l = batch.y_l.numel()
        logits = model(torch.cat([batch.x_l[0], u_strong]))
        logits_s = logits[n_l:]
        loss_x = self.supervised_ce(logits[:n_l], batch.y_l)
        loss_u = (F.cross_entropy(logits_s, pseudo_label, reduction="none") * mask).mean()
        loss_f = fairness_loss(logits_s, mask, ctx.state["class_probs"], ctx.state["label_hist"])
        out: StepMetrics = {"loss_x": loss_x.detach(), "loss_u": loss_u.detach(), "loss_f": loss_f.detach(),
                            "mask": mask.mean(), "global_threshold": ctx.state["global_threshold"].detach()}
        pl_acc = fmetrics.pseudo_label_accuracy(pseudo_label, batch.y_u, mask)  # hidden labels (-1) excluded
        if pl_acc is not None:
            out["pl_acc"] = pl_acc
        return loss_x + self.params.lambda_u * loss_u + self.params.lambda_e * loss_f, out
