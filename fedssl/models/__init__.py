"""Models. ``build_model(name, num_classes)`` returns the module whose
``state_dict()`` is exactly what a ClientApp exchanges.

Every model exposes ``features(x) -> z`` (the backbone embedding, shape [B, D]) and
``head(z) -> logits`` ([B, num_classes]); ``forward(x) = head(features(x))``. Open-world
algorithms (ORCA, FedoSSL) use a cosine-normalised head (``cosine_head=True``).
"""

from __future__ import annotations

import torch
from torch import nn

from fedssl.config import Config, ConfigError
from fedssl.models.heads import NormedLinear
from fedssl.plugins import PluginError, is_import_path, load_callable
from fedssl.models.resnet import ResNet18


class CNN(nn.Module):
    """Two 5x5 conv + max-pool blocks (16 and 32 channels) and a 128-unit embedding,
    sized for 28x28 or 32x32 input. About 4x cheaper than the 32/64 variant on CPU
    and within a point of it on Fashion-MNIST.

    ``batch_norm=True`` (``model.name = "cnn_bn"``) puts a BatchNorm after each conv
    and after the embedding, before its ReLU (conv and embedding then carry no bias,
    which BN's shift replaces). BN after the convs follows SemiFL's WideResNet, where
    every conv is followed by BN; BN after the embedding follows the "2 Conv+pooling+BN"
    entry of Fashion-MNIST's benchmark (0.934), a Keras net whose only BN sits after
    its dense embedding. Without ``batch_norm`` the keys are those of ``cnn``."""

    feature_dim = 128

    def __init__(self, num_classes: int, in_channels: int = 1, cosine_head: bool = False,
                 image_size: int = 28, batch_norm: bool = False) -> None:
        super().__init__()
        side = ((image_size - 4) // 2 - 4) // 2
        bn = batch_norm
        self.backbone = nn.Sequential(
            nn.Conv2d(in_channels, 16, 5, bias=not bn), *_norm(nn.BatchNorm2d(16), bn), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5, bias=not bn), *_norm(nn.BatchNorm2d(32), bn), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * side * side, self.feature_dim, bias=not bn),
            *_norm(nn.BatchNorm1d(self.feature_dim), bn), nn.ReLU(),
        )
        self.head = (NormedLinear if cosine_head else nn.Linear)(self.feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _norm(layer: nn.Module, on: bool) -> list[nn.Module]:
    return [layer] if on else []


def build_model(name: str, num_classes: int, in_channels: int = 1,
                cosine_head: bool = False, image_size: int = 28) -> nn.Module:
    """Build a fresh model; the same (name, num_classes, ...) gives the same keys.
    ``name`` may be a user's ``"module:function"`` (see ``model.name``)."""
    if is_import_path(name):
        return _user_model(name, num_classes, in_channels, cosine_head, image_size)
    if name in ("cnn", "cnn_bn"):
        return CNN(num_classes, in_channels, cosine_head, image_size, batch_norm=name == "cnn_bn")
    if name == "resnet18":
        return ResNet18(num_classes, in_channels, cosine_head)
    raise ValueError(f"unknown model {name!r}")


def run_model(cfg: Config, in_channels: int, image_size: int) -> nn.Module:
    """The model of ``cfg``'s run for images [in_channels, image_size, image_size]:
    ``model.name`` with one output per class of the dataset, and the cosine head when
    the algorithm is an open-world one."""
    return build_model(cfg.model.name, cfg.num_classes, in_channels, cfg.algorithm_class.open_world, image_size)


def _user_model(name: str, num_classes: int, in_channels: int, cosine_head: bool, image_size: int) -> nn.Module:
    """The user's model, checked: a Module whose output has one logit per class, and
    with ``features``/``head`` as every fedssl model has (the open-world algorithms and
    FedSTO use them)."""
    try:
        model = load_callable(name)(num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                                    cosine_head=cosine_head)
    except PluginError as e:
        raise ConfigError(f"model.name: {e}") from None
    except Exception as e:  # the user's function may raise anything
        raise ConfigError(f"model.name: {name!r} raised {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.name: {name!r} returned {type(model).__name__}, not a torch.nn.Module")
    if not (callable(getattr(model, "features", None)) and isinstance(getattr(model, "head", None), nn.Module)):
        raise ConfigError(f"model.name: {name!r}'s model needs a features(x) method and a head module "
                          "(forward(x) = head(features(x)))")
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(2, in_channels, image_size, image_size))
    except Exception as e:
        raise ConfigError(f"model.name: {name!r}'s model fails on input [2, {in_channels}, {image_size}, "
                          f"{image_size}]: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    model.train()
    if tuple(out.shape) != (2, num_classes):
        raise ConfigError(f"model.name: {name!r}'s model returns shape {tuple(out.shape)} for a batch of 2, "
                          f"expected (2, {num_classes})")
    return model


def state_nbytes(model: nn.Module) -> int:
    """Bytes of the model's state dict: what one client update carries."""
    return sum(v.numel() * v.element_size() for v in model.state_dict().values())
