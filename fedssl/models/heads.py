"""Classifier heads shared by the models."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class NormedLinear(nn.Module):
    """Cosine-similarity classifier: ``s * <z/|z|, w_k/|w_k|>`` (ORCA, s = 10)."""

    def __init__(self, in_features: int, out_features: int, scale: float = 10.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.weight.data.uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)
        self.scale = scale

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(z, dim=1) @ F.normalize(self.weight, dim=0)
