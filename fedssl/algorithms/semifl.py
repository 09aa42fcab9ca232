"""SemiFL (Diao, Ding & Tarokh, NeurIPS 2022): the client side of alternate training.

Each round the client pseudo-labels its unlabeled shard ONCE with the received global
model (eval mode, one weak view), keeping samples whose max probability is at least
``client.semifl.threshold`` (tau). Those labels stay fixed for the round, and the round
iterates over that confident subset only (:meth:`SemiFL.unlabeled_pool`):
``client.local_epochs`` passes in batches of ``batch_size x uratio``. One step's loss on
a batch x of confident samples with pseudo-labels y_hat is

    L_fix = CE(f(strong(x)), y_hat)
    lambda ~ Beta(a, a)                                  (one scalar per batch, a = client.semifl.mix_alpha)
    x_mix = lambda * weak(x) + (1 - lambda) * weak(x')   (x' drawn with replacement from
                                                          ALL local samples, label y' = argmax)
    L_mix = lambda * CE(f(x_mix), y_hat) + (1 - lambda) * CE(f(x_mix), y')
    L     = L_fix + client.semifl.lambda_u * L_mix              (SemiFL's Mix weight is 1)

plus the supervised CE when the client also holds labels (mixed case). A client with no
confident sample runs no step and is left out of the round's average
(``leave_out_idle``), as SemiFL's code leaves it inactive.

The client step's defaults are those of SemiFL's code (``src/utils.py``,
``src/modules/modules.py``), set as this algorithm's ``[client]`` defaults: 5 local
epochs over the confident subset, batch 10 (``batch_size = 10``, ``uratio = 1``), SGD
lr 0.03 with Nesterov momentum 0.9 and weight decay 5e-4, gradients clipped at norm 1
(``max_grad_norm = 1``). ``client.local_steps > 0`` replaces the epochs by fixed steps,
still drawn from the confident subset.

The rest of SemiFL lives elsewhere: the server's fine-tuning on its labels after every
aggregation and a warm-up (``fedssl.server_training``), static batch norm (recomputed
there on the server's labeled data for models with BN, ``cnn_bn`` and ``resnet18``;
``cnn`` has none), and global momentum (run with ``server.strategy = "fedavgm"``,
``server.server_lr = 1``, ``server.server_momentum = 0.5``: SemiFL's code uses 0.5 in
every partition, IID and non-IID, in its ``src/make.py``), measured against the
server's fine-tuned model as SemiFL does (:mod:`fedssl.strategies.reference`). Clients are
aggregated with equal weights (SemiFL's choice): this algorithm reports num-examples 1.

Choices where our machinery differs from SemiFL's code, and why:
- The client lr follows ``client.lr_schedule``, a cosine over the run's rounds; SemiFL's
  cosine spans its 800 global epochs whatever the run's length.
- The server's step is the shared one (``server.train_steps = 50`` steps of batch
  ``server.train_batch_size = 32``, a 500-step warm-up); SemiFL's server runs 5 epochs
  over its labels in batches of 10 (50 steps at 10 labels per class) and has no
  warm-up (``src/train_classifier_ssfl.py``): its first clients label with an untrained
  model, which passes almost no sample at tau = 0.95. The warm-up is fedssl's shared
  labels-at-server default, kept for every method alike. SemiFL's batch of 10 on the
  server measured 0.7 points below batch 32 on the first run's split (20 rounds, 3
  seeds, docs/results/labels_at_server.md).
- The confident batch itself plays the role of SemiFL's separate "mix" batch of
  confident samples (SemiFL zips a second loader of the same size over them).
- ``client.semifl.teacher = "ema"`` (not SemiFL's) labels the round from the client's
  persistent EMA teacher instead, the teacher of FixMatch and FedSTO here: it measures
  the teacher choice inside SemiFL. With 10 % participation a client trains about
  every 10th round, so under the default ``client.teacher_sync = 0.5`` its teacher is
  almost the global model again (0.5^10); ``teacher_sync = 1`` keeps it local.
- ``client.semifl.logit_adjustment = tau > 0`` (not SemiFL's) adds tau x log(prior) to the
  logits of the Fix and Mix terms, the prior being the client's confident pseudo-label
  frequencies this round (plus one per class). On a client whose shard holds two or
  three classes, plain CE pushes the head toward them and down on every absent class;
  the adjusted loss fits the pseudo-labels with balanced logits instead (logit
  adjustment, Menon et al. 2021; FedLC, Zhang et al. 2022, for label skew).
- On a model with batch norm (``cnn_bn``, ``resnet18``) each step runs one forward per
  view (labeled, strong, mixed), as SemiFL's code does, so each view is normalised
  with its own batch statistics (``client.semifl.bn_forward = "per_view"``);
  ``"joint"`` runs one forward over the concatenated views, which share one set of
  statistics. A model without BN (``cnn``) always runs the joint forward: there the
  two are the same function, and one forward is faster. A view of a single sample
  (BN cannot normalise it in train mode) falls back to the joint forward.
- ``client.semifl.mix_partners = "confident"`` (not SemiFL's) draws the Mix term's
  partners x' from the round's confident subset instead of every local sample. SemiFL
  labels every partner with its argmax, confident or not, so about half of the Mix
  term's target mass sits on labels that are often wrong; with oracle labels
  (benchmarks/semifl_oracle.py) SemiFL's ceiling rises by 8 points, so every source of
  wrong labels is worth measuring. Measured: +0.2 points on the README's split at 20
  rounds, 3 seeds (docs/results/labels_at_server.md), within the seeds' spread: off.
- ``client.semifl.freeze_head = true`` (not SemiFL's) trains the body only on clients:
  the classifier head stays the received one, and only the server's labeled step trains
  it (FedBABU's body-only update, Oh et al. 2022, and FedSTO's selective phase). Under
  label skew a client's 5 epochs over two or three pseudo-labeled classes pull the head
  toward them. IID shards instead of Dirichlet 0.3 measure 2.7 points higher on the
  first run's split (20 rounds, 3 seeds); freezing the head recovers +0.25 of that there
  and +0.25 on a held-out split (20 labels per class, 50 clients, Dirichlet 0.1), within
  the seeds' spread (docs/results/labels_at_server.md). Off.
- RandAugment is fedssl's (2 ops, magnitude 10, Cutout of half the side), not
  SemiFL's pool with its 100-px translations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedssl.algorithms.base import (Algorithm, Batch, F, PseudoLabelParams, RoundContext, StepMetrics, lazy, nn,
                                    param, register, torch, train_head)

augment = lazy("fedssl.data.augment")


@dataclass(frozen=True)
class SemiFLParams(PseudoLabelParams):
    mix_alpha: float = param(0.75, "mixup lambda ~ Beta(mix_alpha, mix_alpha)", gt=0)
    teacher: str = param("global", "the round's fixed pseudo-labels come from the received global model "
                         "(global, the paper) or the client's persistent EMA teacher (ema, met with the global "
                         "model by client.teacher_sync)", choices=("global", "ema"))
    logit_adjustment: float = param(0.0, "add tau x log(local pseudo-label prior) to the logits of the "
                                    "unlabeled terms (FedLC-style balanced loss against label skew; 0 = off, "
                                    "the paper)", ge=0)
    mix_partners: str = param("all", "the Mix term's partners x': every local sample with its argmax label "
                              "(all, SemiFL's code) or the round's confident subset only (confident)",
                              choices=("all", "confident"))
    bn_forward: str = param("per_view", "on a model with batch norm: one forward per view, each with its own "
                            "batch statistics (per_view, SemiFL's code), or one over all views (joint)",
                            choices=("per_view", "joint"))
    freeze_head: bool = param(False, "train the body only on clients and keep the received classifier head, "
                              "which the server's labeled step trains (FedBABU-style, against label skew); "
                              "off: every layer, SemiFL's code")


@register("semifl")
class SemiFL(Algorithm):
    params_class = SemiFLParams
    metric_keys = ("loss", "loss_x", "loss_fix", "loss_mix", "mask", "mix_lambda", "pl_acc", "selected")
    equal_weight = True
    leave_out_idle = True  # SemiFL's code: a client with no confident sample stays inactive
    # SemiFL's client step (its src/utils.py): 5 epochs of batch 10, lr 0.03, gradient norm clipped at 1
    client_defaults = {"local_epochs": 5, "batch_size": 10, "uratio": 1, "lr": 0.03, "max_grad_norm": 1.0}
    unlabeled_views = ("strong",)
    _x_u: torch.Tensor | None = None  # this round's shard and its fixed pseudo-label probabilities
    _probs: torch.Tensor | None = None
    _confident: torch.Tensor | None = None  # positions of the confident samples (the round's pool)
    _selected_share: float = 0.0  # the confident share of the shard; the batch mask is 1 on the pool
    _log_prior: torch.Tensor | float = 0.0  # tau x log(local pseudo-label prior), or 0 (off)
    _per_view: bool = False  # one forward per view (the model has batch norm and bn_forward = per_view)

    @property
    def uses_teacher(self) -> bool:  # type: ignore[override]
        return self.params.teacher == "ema"

    def begin_round(self, model: nn.Module, ctx: RoundContext, data: Any) -> None:
        """Fixed pseudo-labels for the whole shard from the received global model (or,
        with ``client.semifl.teacher = "ema"``, from the client's EMA teacher)."""
        self._x_u, self._flip = data.x_u, data.flip
        teacher = ctx.teacher if self.uses_teacher and ctx.teacher is not None else model
        self._probs = global_pseudo_probs(teacher, data.x_u, data.flip, ctx.device)
        self._confident = (self._probs.max(dim=1).values >= self.params.threshold).nonzero().squeeze(1).cpu()
        self._selected_share = len(self._confident) / max(len(self._probs), 1)
        tau = self.params.logit_adjustment
        self._log_prior = tau * local_log_prior(self._probs, self.params.threshold) if tau > 0 else 0.0
        self._per_view = self.params.bn_forward == "per_view" and any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        if self.params.freeze_head:
            train_head(model, False)
        model.train()

    def unlabeled_pool(self) -> torch.Tensor | None:
        """The round's confident subset: SemiFL iterates over it only."""
        return self._confident

    def loss(self, model: nn.Module, batch: Batch, ctx: RoundContext) -> tuple[torch.Tensor, StepMetrics]:
        n_l = batch.y_l.numel()
        if not batch.x_u:
            loss_x = self.supervised_ce(model(batch.x_l[0]), batch.y_l)
            return loss_x, {"loss_x": loss_x.item(), "loss_fix": 0.0, "loss_mix": 0.0, "mask": 0.0}
        probs_all, x_u = self._probs, self._x_u
        assert probs_all is not None and x_u is not None and batch.idx_u is not None, "begin_round first"
        probs = probs_all[batch.idx_u]
        conf, y_hat = probs.max(dim=1)
        mask = conf >= self.params.threshold
        if n_l == 0 and not mask.any():  # nothing to learn from in this batch
            zero = torch.stack([p.sum() for p in model.parameters()]).sum() * 0.0
            return zero, {"loss_x": 0.0, "loss_fix": 0.0, "loss_mix": 0.0, "mask": 0.0}
        # mix partners, with replacement, argmax labels: all local samples (SemiFL's code),
        # or only the confident ones, whose labels are far more often right
        n_mix = int(mask.sum())
        if self.params.mix_partners == "confident" and self._confident is not None and len(self._confident):
            pick = torch.randint(0, len(self._confident), (n_mix,))
            partner = self._confident[pick].to(probs_all.device)
        else:
            partner = torch.randint(0, len(probs_all), (n_mix,), device=probs_all.device)
        lam = float(torch.distributions.Beta(self.params.mix_alpha, self.params.mix_alpha).sample())
        idx_c = batch.idx_u[mask.cpu()]
        norm, weak = augment.normalize, augment.weak
        x_mix = (lam * norm(weak(x_u[idx_c], self._flip))
                 + (1 - lam) * norm(weak(x_u[partner.cpu()], self._flip))).to(ctx.device)
        logits = forward_views(model, [batch.x_l[0], batch.x_u[0][mask], x_mix], self._per_view)
        n_c = int(mask.sum())
        loss_x = self.supervised_ce(logits[:n_l], batch.y_l)
        z_fix, z_mix = logits[n_l:n_l + n_c], logits[n_l + n_c:]
        if isinstance(self._log_prior, torch.Tensor):  # logit adjustment on (off: the paper's loss)
            adj = self._log_prior.to(logits.device)
            z_fix, z_mix = z_fix + adj, z_mix + adj
        loss_fix, loss_mix = semifl_loss(z_fix, z_mix, y_hat[mask],
                                         probs_all[partner].argmax(dim=1), lam)
        metrics = {"loss_x": loss_x.item(), "loss_fix": loss_fix.item(), "loss_mix": loss_mix.item(),
                   "mask": mask.float().mean().item(), "mix_lambda": lam, "selected": self._selected_share}
        if batch.y_u is not None and n_c:
            metrics["pl_acc"] = (y_hat[mask] == batch.y_u[mask]).float().mean().item()
        return loss_x + loss_fix + self.params.lambda_u * loss_mix, metrics

    def end_round(self, model: nn.Module, ctx: RoundContext, data: Any) -> dict:
        if self.params.freeze_head:
            train_head(model, True)
        self._log_prior = 0.0
        self._x_u = self._probs = self._confident = None  # do not keep a client's shard past its round
        return {}


def forward_views(model: nn.Module, views: list[torch.Tensor], per_view: bool) -> torch.Tensor:
    """The logits of the concatenated views: one forward per non-empty view (each with
    its own BN batch statistics), or one over all of them (``per_view`` False, or a
    view of one sample, which BN cannot normalise in train mode)."""
    views = [v for v in views if len(v)]
    if not per_view or any(len(v) == 1 for v in views):
        return model(torch.cat(views))
    return torch.cat([model(v) for v in views])


def semifl_loss(logits_strong: torch.Tensor, logits_mix: torch.Tensor, y_hat: torch.Tensor,
                y_partner: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_fix, L_mix) on the confident samples; both zero (with grad) when none."""
    if y_hat.numel() == 0:
        zero = logits_strong.sum() * 0.0 + logits_mix.sum() * 0.0
        return zero, zero
    fix = F.cross_entropy(logits_strong, y_hat)
    mix = lam * F.cross_entropy(logits_mix, y_hat) + (1 - lam) * F.cross_entropy(logits_mix, y_partner)
    return fix, mix


def local_log_prior(probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """log of the client's pseudo-label class frequencies (confident samples, one
    pseudo-count per class so that absent classes stay finite)."""
    conf, y = probs.max(dim=1)
    counts = torch.bincount(y[conf >= threshold], minlength=probs.shape[1]).to(probs.dtype) + 1.0
    return torch.log(counts / counts.sum())


def global_pseudo_probs(model: nn.Module, x_u: torch.Tensor, flip: bool, device: torch.device,
                        batch_size: int = 512) -> torch.Tensor:
    """softmax(model(weak(x))) for every sample, model in eval mode, without gradient."""
    model.eval()
    norm, weak = augment.normalize, augment.weak
    with torch.no_grad():
        out = [torch.softmax(model(norm(weak(x_u[i:i + batch_size], flip)).to(device)), dim=1)
               for i in range(0, len(x_u), batch_size)]
        num_classes = model(torch.zeros(1, *x_u.shape[1:], device=device)).shape[1] if not out else None
    return torch.cat(out) if out else torch.empty(0, num_classes or 0, device=device)
