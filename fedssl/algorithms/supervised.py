"""Supervised baseline: cross-entropy on the labeled shard only. No own parameters."""

from __future__ import annotations

from fedssl.algorithms.base import StepMetrics, Algorithm, Batch, RoundContext, nn, register, torch


@register("supervised")
class Supervised(Algorithm):
    metric_keys = ("loss", "loss_x")
    uses_unlabeled = False
    unlabeled_views = ()

    def loss(self, model: nn.Module, batch: Batch, ctx: RoundContext) -> tuple[torch.Tensor, StepMetrics]:
        loss_x = self.supervised_ce(model(batch.x_l[0]), batch.y_l)
        return loss_x, {"loss_x": loss_x.detach()}
