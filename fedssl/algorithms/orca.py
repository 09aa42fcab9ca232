"""ORCA (Cao, Brbic, Leskovec, ICLR 2022): open-world semi-supervised learning.

    L = CE_m(f(x_l), y) + L_pair - H( mean_b p_b )

- ``CE_m``: cross-entropy on labeled samples with an uncertainty-adaptive margin
  ``m = -min(u, 0.5)`` on the true class's cosine, where ``u`` is the mean
  uncertainty ``1 - max p`` of the model on the client's unlabeled data;
- ``L_pair``: each sample of view 1 should agree, ``BCE(<p_i, p'_pos(i)>, 1)``, with
  a positive partner in view 2: for a labeled sample a random other sample of its
  class, for an unlabeled one its nearest neighbour (cosine, in feature space);
- ``H``: entropy of the batch-mean prediction, maximised so unlabeled samples spread
  over all K classes (seen and unseen) instead of collapsing.

The model has one cosine-head output per class (``NormedLinear``, scale 10).

ORCA (like FedoSSL) starts from a self-supervised pretrained backbone. From a random
init its objective collapses: the margin (+5 on the true logit while the model is
uncertain) mutes the labeled loss, and a constant output ``p`` for every sample is
a local minimum of ``L_pair - H`` (it equals ``H_2(p) - H(p) <= 0``). As a stand-in
for pretraining, the first ``client.orca.pretrain_rounds`` rounds train the plain
cross-entropy on labeled samples only.

ORCA recomputes ``u`` once per epoch; here it is recomputed once per round, in
:meth:`ORCA.begin_round`, on a random sample of the client's unlabeled data
(up to ``uncertainty_samples``, un-augmented) with the global model it starts from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedssl.algorithms.base import (StepMetrics, Algorithm, Batch, Params, RoundContext, lazy, nn, param, register,
                                    torch)

augment, fmetrics, openworld = lazy("fedssl.data.augment"), lazy("fedssl.metrics"), lazy("fedssl.openworld")


@dataclass(frozen=True)
class ORCAParams(Params):
    pretrain_rounds: int = param(1, "plain labeled CE rounds first (stands in for the reference's "
                                 "self-supervised pretraining)", ge=0)


@dataclass
class TwoViews:
    """One forward pass over the joint batch [labeled; unlabeled] in both views."""

    z1: torch.Tensor  # features of view 1 [N, D]
    z2: torch.Tensor  # features of view 2 [N, D]
    logits1: torch.Tensor  # [N, K]
    p1: torch.Tensor  # softmax of view 1 [N, K]
    p2: torch.Tensor  # softmax of view 2 [N, K]
    n_l: int  # the first n_l rows are labeled
    pos: torch.Tensor  # positive partner of each row [N]


@register("orca")
class ORCA(Algorithm):
    params_class: type[Params] = ORCAParams
    metric_keys = ("loss", "loss_x", "loss_pair", "entropy", "margin")
    open_world = True
    labeled_views = ("weak", "weak")
    unlabeled_views = ("weak", "weak")
    uncertainty_samples = 512
    margin_cap = 0.5

    def begin_round(self, model: nn.Module, ctx: RoundContext, data: Any) -> None:
        n = len(data.y_u)
        if n:
            idx = torch.randperm(n)[: self.uncertainty_samples]
            _, logits = fmetrics.predict(model, augment.normalize(data.x_u[idx]))
            ctx.state["uncertainty"] = torch.tensor(openworld.mean_uncertainty(torch.softmax(logits, dim=1)))
        else:
            ctx.state["uncertainty"] = torch.tensor(0.0)

    def margin(self, ctx: RoundContext) -> float:
        return openworld.adaptive_margin(float(ctx.state.get("uncertainty", 0.0)), self.margin_cap)

    def forward_views(self, model: nn.Module, batch: Batch) -> TwoViews:
        x1 = torch.cat([batch.x_l[0], *batch.x_u[:1]])
        x2 = torch.cat([batch.x_l[1], *batch.x_u[1:2]])
        z1, z2 = model.features(x1), model.features(x2)
        logits1 = model.head(z1)
        return TwoViews(z1, z2, logits1, torch.softmax(logits1, dim=1),
                        torch.softmax(model.head(z2), dim=1), batch.y_l.numel(),
                        openworld.pairwise_positives(z1.detach(), batch.y_l))

    def orca_terms(self, model: nn.Module, v: TwoViews, batch: Batch,
                   ctx: RoundContext) -> dict[str, torch.Tensor]:
        scale = float(getattr(model.head, "scale", 1.0))
        return {
            "loss_x": openworld.margin_cross_entropy(v.logits1[:v.n_l], batch.y_l, self.margin(ctx), scale),
            "loss_pair": openworld.pairwise_bce(v.p1, v.p2[v.pos]),
            "entropy": openworld.entropy_of_mean(v.p1),
        }

    def pretraining(self, ctx: RoundContext) -> bool:
        return ctx.server_round <= self.params.pretrain_rounds

    def pretrain_loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, StepMetrics]:
        loss_x = self.supervised_ce(model(batch.x_l[0]), batch.y_l)
        return loss_x, {"loss_x": float(loss_x.detach())}

    def loss(self, model: nn.Module, batch: Batch, ctx: RoundContext) -> tuple[torch.Tensor, StepMetrics]:
        if self.pretraining(ctx):
            return self.pretrain_loss(model, batch)
        v = self.forward_views(model, batch)
        t = self.orca_terms(model, v, batch, ctx)
        total = t["loss_x"] + t["loss_pair"] - t["entropy"]
        return total, {**{k: float(x.detach()) for k, x in t.items()}, "margin": self.margin(ctx)}
