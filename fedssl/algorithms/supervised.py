"""Supervised baseline: cross-entropy on the labeled shard only.

It is the reference every SSL gain is measured against, so at its defaults it trains to
its plateau: ``client.local_epochs`` passes over the labeled shard, but at least
``client.supervised.min_steps`` steps a round. With few labels the epochs alone starve
it: at 2 % labels on 100 clients (about 12 labels each) two epochs are 2 steps a round,
and after 10 rounds it stood at 22 % test accuracy, against 65 % at 50 steps and 65 %
at 200 (``benchmarks/defaults.py``, docs/results/defaults.md); the value 50 is also
the one at which, on another labels-at-client split, supervised matched every
FixMatch-family method. With many labels the epochs already give more steps, and
``client.local_steps > 0`` fixes the count outright. A client without labels runs no
step and returns the model untouched (labels at the server: server-only).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedssl.algorithms.base import StepMetrics, Algorithm, Batch, Params, RoundContext, nn, param, register, torch


@dataclass(frozen=True)
class SupervisedParams(Params):
    min_steps: int = param(50, "local steps a round at least, under client.local_epochs (the reference trained "
                               "to its plateau when few labels make few epochs' steps)", ge=0)


@register("supervised")
class Supervised(Algorithm):
    params_class = SupervisedParams
    metric_keys = ("loss", "loss_x")
    uses_unlabeled = False
    unlabeled_views = ()

    def epoch_steps(self, steps: int) -> int:
        return max(steps, self.params.min_steps)

    def loss(self, model: nn.Module, batch: Batch, ctx: RoundContext) -> tuple[torch.Tensor, StepMetrics]:
        loss_x = self.supervised_ce(model(batch.x_l[0]), batch.y_l)
        return loss_x, {"loss_x": loss_x.detach()}
