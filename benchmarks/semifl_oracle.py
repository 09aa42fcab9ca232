"""SemiFL with oracle pseudo-labels: a diagnostic plug-in, never a result to compare methods by.

It answers one question about labels at the server: is SemiFL's ceiling (about 0.74 on
Fashion-MNIST at 10 labels per class, reached by round 20) set by its wrong
pseudo-labels, or by what is left when they are right (the federation: label skew,
short local runs, the server's fine-tuning on 100 labels)? Two arms, each SemiFL's
client step unchanged but for its labels (the clients' true labels, which every run
carries for the ``pl_acc`` metric and no method may train on):

- ``SemiFLCleanPL``: the round's confident subset (max probability >= tau under the
  received model) minus every sample whose pseudo-label is wrong; the kept samples
  and the Mix partners carry their true labels. Same selection mechanism, no noise:
  the gain over plain SemiFL is what its wrong pseudo-labels cost.
- ``SemiFLAllTrue``: every unlabeled sample, with its true label (fully supervised
  clients under SemiFL's step and aggregation): the federation's own ceiling.

    client.algorithm = "benchmarks/semifl_oracle.py:SemiFLCleanPL"   (or :SemiFLAllTrue)

Grid and results: benchmarks/grids/semifl_oracle.toml, docs/results/labels_at_server.md.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fedssl.algorithms.base import RoundContext
from fedssl.algorithms.semifl import SemiFL


class SemiFLCleanPL(SemiFL):
    """SemiFL whose confident pseudo-labels are kept only where right (oracle)."""

    keep_all = False

    def begin_round(self, model: nn.Module, ctx: RoundContext, data: Any) -> None:
        super().begin_round(model, ctx, data)
        assert self._probs is not None and self._confident is not None
        y_true = data.y_u.to(self._probs.device)
        right = self._probs.argmax(dim=1) == y_true
        if self.keep_all:
            self._confident = torch.arange(len(y_true))
        else:
            self._confident = self._confident[right[self._confident].cpu()]
        self._selected_share = len(self._confident) / max(len(y_true), 1)
        # one-hot true labels: every kept sample passes tau, Mix partners carry the truth
        self._probs = F.one_hot(y_true, self._probs.shape[1]).to(self._probs.dtype)


class SemiFLAllTrue(SemiFLCleanPL):
    """Every unlabeled sample with its true label under SemiFL's client step (oracle)."""

    keep_all = True
