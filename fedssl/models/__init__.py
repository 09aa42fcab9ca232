"""Models. ``build_model(name, num_classes)`` returns the module whose
``state_dict()`` is exactly what a ClientApp exchanges.

Every model exposes ``features(x) -> z`` (the backbone embedding, shape [B, D]) and
``head(z) -> logits`` ([B, num_classes]); ``forward(x) = head(features(x))``. Open-world
algorithms (ORCA, FedoSSL) use a cosine-normalised head (``cosine_head=True``).
"""

from __future__ import annotations

import torch
from torch import nn

from fedssl.models.heads import NormedLinear
from fedssl.models.resnet import ResNet18


class CNN(nn.Module):
    """Two 5x5 conv + max-pool blocks (16 and 32 channels) and a 128-unit embedding,
    sized for 28x28 or 32x32 input. About 4x cheaper than the 32/64 variant on CPU
    and within a point of it on Fashion-MNIST."""

    feature_dim = 128

    def __init__(self, num_classes: int, in_channels: int = 1, cosine_head: bool = False,
                 image_size: int = 28) -> None:
        super().__init__()
        side = ((image_size - 4) // 2 - 4) // 2
        self.backbone = nn.Sequential(
            nn.Conv2d(in_channels, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * side * side, self.feature_dim), nn.ReLU(),
        )
        self.head = (NormedLinear if cosine_head else nn.Linear)(self.feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_model(name: str, num_classes: int, in_channels: int = 1,
                cosine_head: bool = False, image_size: int = 28) -> nn.Module:
    """Build a fresh model; the same (name, num_classes, ...) gives the same keys."""
    if name == "cnn":
        return CNN(num_classes, in_channels, cosine_head, image_size)
    if name == "resnet18":
        return ResNet18(num_classes, in_channels, cosine_head)
    raise ValueError(f"unknown model {name!r}")


def state_nbytes(model: nn.Module) -> int:
    """Bytes of the model's state dict: what one client update carries."""
    return sum(v.numel() * v.element_size() for v in model.state_dict().values())
