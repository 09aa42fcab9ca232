"""Weak and strong augmentation on uint8 image batches [B, C, H, W].

weak   = random translation (pad + crop) + horizontal flip
strong = weak + torchvision RandAugment (2 ops) + Cutout (half the side)
Randomness comes from torch's global RNG, which the trainer seeds per (run seed,
round, client), so augmentations are reproducible and independent of packing.
"""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F


@cache
def _randaugment():  # noqa: ANN202
    # Imported on first use: torchvision pulls in torch._dynamo (about 1 s), which a
    # worker whose algorithm never augments strongly should not pay at cold start.
    from torchvision.transforms import v2

    return v2.RandAugment(num_ops=2, magnitude=10)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float in [-1, 1]."""
    return x.float().div_(127.5).sub_(1.0)


def weak(x: torch.Tensor, flip: bool = True) -> torch.Tensor:
    b, _, h, w = x.shape
    if b == 0:
        return x
    # 1/8 of the side with reflection for colour images (CIFAR convention); 2 px of
    # black for grayscale ones, whose background is black (reflection adds strokes).
    gray = x.shape[1] == 1
    pad = 2 if gray else max(1, h // 8)
    padded = F.pad(x.float(), (pad, pad, pad, pad), mode="constant" if gray else "reflect").to(x.dtype)
    oy = torch.randint(0, 2 * pad + 1, (b,))
    ox = torch.randint(0, 2 * pad + 1, (b,))
    rows = (oy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w))[:, None, None, :]
    out = padded[torch.arange(b)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None], rows, cols]
    if flip:
        flips = torch.rand(b) < 0.5
        out = torch.where(flips[:, None, None, None], out.flip(-1), out)
    return out


def cutout(x: torch.Tensor) -> torch.Tensor:
    b, _, h, w = x.shape
    size = h // 2
    cy = torch.randint(0, h, (b,))
    cx = torch.randint(0, w, (b,))
    ys = torch.arange(h)[None, :, None]
    xs = torch.arange(w)[None, None, :]
    hole = ((ys - cy[:, None, None]).abs() <= size // 2) & ((xs - cx[:, None, None]).abs() <= size // 2)
    return x.masked_fill(hole[:, None], 127)


def strong(x: torch.Tensor, flip: bool = True) -> torch.Tensor:
    if x.shape[0] == 0:
        return x
    x = weak(x, flip)
    x = torch.stack([_randaugment()(img) for img in x])
    return cutout(x)


VIEWS = {"weak": weak, "strong": strong, "none": lambda x, flip=True: x}
