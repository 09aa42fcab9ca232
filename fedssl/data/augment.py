"""Weak and strong augmentation on uint8 image batches [B, C, H, W], vectorised over the batch.

weak   = random translation (pad + crop) + horizontal flip
strong = weak + RandAugment (2 ops, magnitude 10 of 31 bins) + Cutout (half the side)

RandAugment here draws from exactly the distribution of torchvision's
``v2.RandAugment(num_ops=2, magnitude=10)`` (nearest interpolation, fill 0), image by
image: each of the 2 ops is uniform over the same 14 ops, and a signed op's magnitude
is negated with probability 1/2. Instead of calling it once per image, each op slot is
applied to the whole batch at once: geometric ops as one gather through pixel maps and
pointwise ops as one gather through lookup tables, both read off torchvision's own
kernels, and the ops that read image statistics or neighbours (contrast, sharpness,
autocontrast, equalize, colour) as one torchvision kernel call per (op, sign) sub-batch.
Each image gets exactly what torchvision gives for the same op and magnitude
(``tests/test_augment.py``).

Randomness comes from torch's global CPU RNG, which the trainer seeds per (run seed,
round, client), so augmentations are reproducible, independent of packing, and the
same on any device: the random draws stay on the CPU, the pixels stay where ``x`` is.
"""

from __future__ import annotations

import math
from functools import cache

import torch

NUM_OPS = 2
MAGNITUDE_BIN, NUM_BINS = 10, 31
# torchvision's RandAugment op pool, in its order (the order fixes which id is which op).
RANDAUGMENT_OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness",
                   "Color", "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize")
# Ops whose magnitude is negated with probability 1/2 (the others are unsigned or ignore it).
SIGNED = frozenset({"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate",
                    "Brightness", "Color", "Contrast", "Sharpness"})
CUTOUT_FILL = 127
_IS_SIGNED = torch.tensor([op in SIGNED for op in RANDAUGMENT_OPS])
GEOMETRIC = frozenset({"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"})
_IS_GEOMETRIC = torch.tensor([op in GEOMETRIC for op in RANDAUGMENT_OPS])
POINTWISE = frozenset({"Brightness", "Posterize", "Solarize"})  # a function of the pixel value only
_IS_POINTWISE = torch.tensor([op in POINTWISE for op in RANDAUGMENT_OPS])
# The rest read image statistics or neighbours: applied per (op, sign) sub-batch.
_IS_PER_IMAGE = torch.tensor([op not in GEOMETRIC | POINTWISE | {"Identity"} for op in RANDAUGMENT_OPS])
_IS_COLOR = torch.tensor([op == "Color" for op in RANDAUGMENT_OPS])


@cache
def randaugment_magnitude(op: str, height: int, width: int) -> float:
    """The unsigned magnitude of ``op`` at bin 10 of 31, as torchvision computes it."""
    top = {"ShearX": 0.3, "ShearY": 0.3, "TranslateX": 150.0 / 331.0 * width,
           "TranslateY": 150.0 / 331.0 * height, "Rotate": 30.0, "Brightness": 0.9, "Color": 0.9,
           "Contrast": 0.9, "Sharpness": 0.9}
    if op in top:
        return float(torch.linspace(0.0, top[op], NUM_BINS)[MAGNITUDE_BIN])
    if op == "Posterize":  # bits: 8 down to 4
        return float((8 - (torch.arange(NUM_BINS) / ((NUM_BINS - 1) / 4))).round().int()[MAGNITUDE_BIN])
    if op == "Solarize":  # threshold as a fraction of 255
        return float(torch.linspace(1.0, 0.0, NUM_BINS)[MAGNITUDE_BIN])
    return 0.0


@cache
def _functional():  # noqa: ANN202
    # Imported on first use: torchvision pulls in torch._dynamo (about 1 s), which a
    # worker whose algorithm never augments strongly should not pay at cold start.
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    return TF, InterpolationMode.NEAREST


def apply_op(x: torch.Tensor, op: str, magnitude: float) -> torch.Tensor:
    """One RandAugment op with a fixed signed magnitude on a uint8 batch [N, C, H, W],
    the same call torchvision's RandAugment makes for one image (its tensor kernels are
    called directly: the dispatcher costs more than the op on a few small images)."""
    TF, nearest = _functional()
    if op == "Identity":
        return x
    if op in ("ShearX", "ShearY"):
        deg = math.degrees(math.atan(magnitude))
        return TF.affine_image(x, angle=0.0, translate=[0, 0], scale=1.0, interpolation=nearest, fill=None,
                               shear=[deg, 0.0] if op == "ShearX" else [0.0, deg], center=[0, 0])
    if op in ("TranslateX", "TranslateY"):
        shift = [int(magnitude), 0] if op == "TranslateX" else [0, int(magnitude)]
        return TF.affine_image(x, angle=0.0, translate=shift, scale=1.0, interpolation=nearest,
                               shear=[0.0, 0.0], fill=None)
    if op == "Rotate":
        return TF.rotate_image(x, angle=magnitude, interpolation=nearest, fill=None)
    adjust = {"Brightness": TF.adjust_brightness_image, "Color": TF.adjust_saturation_image,
              "Contrast": TF.adjust_contrast_image, "Sharpness": TF.adjust_sharpness_image}
    if op in adjust:
        return adjust[op](x, 1.0 + magnitude)
    if op == "Posterize":
        return TF.posterize_image(x, bits=int(magnitude))
    if op == "Solarize":
        return TF.solarize_image(x, threshold=255.0 * magnitude)
    if op == "AutoContrast":
        return TF.autocontrast_image(x)
    if op == "Equalize":
        return TF.equalize_image(x)
    raise ValueError(f"unknown RandAugment op {op!r}")


def sample_randaugment(b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and op slot: op ids [NUM_OPS, b] (uniform) and negate flags [NUM_OPS, b]
    (probability 1/2, ``rand <= 0.5`` as torchvision; only used by signed ops)."""
    return torch.randint(len(RANDAUGMENT_OPS), (NUM_OPS, b)), torch.rand(NUM_OPS, b) <= 0.5


@cache
def _geometric_maps(h: int, w: int, device: torch.device) -> torch.Tensor:
    """For every (op, sign) variant id ``2 * op + negate``: the flat source pixel of each
    output pixel [2 * len(RANDAUGMENT_OPS), h * w], ``h * w`` where the op fills with 0.
    Read off torchvision itself: its nearest-neighbour affine applied to an image holding
    each pixel's own index returns exactly the index it samples; identity elsewhere."""
    probe = torch.arange(1, h * w + 1, dtype=torch.float32).reshape(1, 1, h, w)
    maps = []
    for op in RANDAUGMENT_OPS:
        for negate in (False, True):
            if op in GEOMETRIC:
                mag = randaugment_magnitude(op, h, w)
                src = apply_op(probe, op, -mag if negate else mag).reshape(-1).long() - 1
                maps.append(src.masked_fill_(src < 0, h * w))
            else:
                maps.append(torch.arange(h * w))
    return torch.stack(maps).to(device)


@cache
def _pointwise_luts(device: torch.device) -> torch.Tensor:
    """For every variant id: the uint8 lookup table [2 * len(RANDAUGMENT_OPS), 256] of a
    pointwise op, read off torchvision's op applied to the 256 levels; identity elsewhere."""
    levels = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    luts = []
    for op in RANDAUGMENT_OPS:
        for negate in (False, True):
            mag = randaugment_magnitude(op, 16, 16)
            mag = -mag if negate and op in SIGNED else mag  # unsigned ops: both ids alike
            luts.append(apply_op(levels, op, mag).reshape(-1) if op in POINTWISE
                        else levels.reshape(-1))
    return torch.stack(luts).to(device)


def randaugment(x: torch.Tensor, ops: torch.Tensor | None = None,
                negate: torch.Tensor | None = None) -> torch.Tensor:
    """RandAugment with per-image randomness. Per op slot, every geometric op of the
    batch is one gather through its variant's pixel map, every pointwise op one gather
    through its lookup table; each other op is applied once to the sub-batch that drew
    it (grouped by op and sign). ``ops``/``negate`` [NUM_OPS, B]
    default to fresh draws from :func:`sample_randaugment`."""
    b, c, h, w = x.shape
    if b == 0:
        return x
    if ops is None or negate is None:
        ops, negate = sample_randaugment(b)
    for slot in range(ops.shape[0]):
        variant = ops[slot] * 2 + (negate[slot] & _IS_SIGNED[ops[slot]])
        if _IS_GEOMETRIC[ops[slot]].any():
            x = _gather_pixels(x, _geometric_maps(h, w, x.device)[variant.to(x.device, non_blocking=True)])
        if _IS_POINTWISE[ops[slot]].any():
            lut = _pointwise_luts(x.device)[variant.to(x.device, non_blocking=True)]
            x = lut.gather(1, x.reshape(b, c * h * w).long()).reshape(b, c, h, w)
        x = _per_image_ops(x, variant)
    return x


def _per_image_ops(x: torch.Tensor, variant: torch.Tensor) -> torch.Tensor:
    """Apply each sample's op that reads image statistics or neighbours (contrast,
    sharpness, autocontrast, equalize, colour), one call per variant (2 * op + negate)."""
    todo = _IS_PER_IMAGE[variant // 2]
    if x.shape[1] == 1:  # saturation leaves a grayscale image as it is
        todo &= ~_IS_COLOR[variant // 2]
    key = torch.where(todo, variant + 1, 0)  # 0: nothing to do
    order = torch.argsort(key, stable=True)
    counts = torch.bincount(key, minlength=2 * len(RANDAUGMENT_OPS) + 1).tolist()
    if counts[0] == len(key):
        return x
    order_dev = order.to(x.device, non_blocking=True)
    parts = []
    for k, chunk in enumerate(x.index_select(0, order_dev).split(counts)):
        if k > 0 and len(chunk):
            op = RANDAUGMENT_OPS[(k - 1) // 2]
            mag = randaugment_magnitude(op, x.shape[2], x.shape[3])
            chunk = apply_op(chunk, op, -mag if (k - 1) % 2 else mag)
        parts.append(chunk)
    return torch.empty_like(x).index_copy_(0, order_dev, torch.cat(parts))


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float in [-1, 1]."""
    return x.float().div_(127.5).sub_(1.0)


def _crop_pad(c: int, h: int) -> int:
    # 1/8 of the side with reflection for colour images (CIFAR convention); 2 px of
    # black for grayscale ones, whose background is black (reflection adds strokes).
    return 2 if c == 1 else max(1, h // 8)


@cache
def _crop_flip_maps(c: int, h: int, w: int, device: torch.device) -> torch.Tensor:
    """For every weak variant ``(oy * (2 pad + 1) + ox) * 2 + flip``: the flat source pixel
    of each output pixel [variants, h * w] of pad-then-crop at offset (oy, ox), then
    flip; ``h * w`` marks the zero padding of grayscale images."""
    pad = _crop_pad(c, h)
    n = 2 * pad + 1
    oy, ox, flip = (t.reshape(-1) for t in torch.meshgrid(
        torch.arange(n), torch.arange(n), torch.arange(2), indexing="ij"))
    rows = oy[:, None] + torch.arange(h) - pad  # source row per output row, may be outside
    cols = ox[:, None] + torch.arange(w) - pad
    cols = torch.where(flip[:, None] == 1, cols.flip(-1), cols)
    if c == 1:
        inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
        src = (rows.clamp(0, h - 1)[:, :, None] * w + cols.clamp(0, w - 1)[:, None, :]).masked_fill(~inside, h * w)
    else:  # reflect without repeating the edge: -1 -> 1, h -> h - 2
        rows = (h - 1) - ((h - 1) - rows.abs()).abs()
        cols = (w - 1) - ((w - 1) - cols.abs()).abs()
        src = rows[:, :, None] * w + cols[:, None, :]
    return src.reshape(len(oy), h * w).to(device)


def _gather_pixels(x: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """out[i, :, p] = x[i, :, src[i, p]], with index h * w reading 0."""
    b, c, h, w = x.shape
    padded = torch.cat([x.reshape(b, c, h * w), x.new_zeros(b, c, 1)], dim=2)
    return padded.gather(2, src[:, None].expand(b, c, h * w)).reshape(b, c, h, w)


def weak(x: torch.Tensor, flip: bool = True) -> torch.Tensor:
    """Random translation by up to ``pad`` pixels (pad, then crop at a uniform offset)
    and a horizontal flip with probability 1/2, as one gather through a cached map."""
    b, c, h, w = x.shape
    if b == 0:
        return x
    n = 2 * _crop_pad(c, h) + 1
    oy = torch.randint(0, n, (b,))
    ox = torch.randint(0, n, (b,))
    flips = torch.rand(b) < 0.5 if flip else torch.zeros(b, dtype=torch.bool)
    variant = (oy * n + ox) * 2 + flips
    return _gather_pixels(x, _crop_flip_maps(c, h, w, x.device)[variant.to(x.device, non_blocking=True)])


def cutout(x: torch.Tensor) -> torch.Tensor:
    """Fill a square of side h/2 (+1), centred uniformly over the image and clipped at
    its border, with grey (127)."""
    b, _, h, w = x.shape
    size = h // 2
    cy = torch.randint(0, h, (b,))
    cx = torch.randint(0, w, (b,))
    ys = torch.arange(h)[None, :, None]
    xs = torch.arange(w)[None, None, :]
    hole = ((ys - cy[:, None, None]).abs() <= size // 2) & ((xs - cx[:, None, None]).abs() <= size // 2)
    return x.masked_fill(hole[:, None].to(x.device, non_blocking=True), CUTOUT_FILL)


def strong(x: torch.Tensor, flip: bool = True) -> torch.Tensor:
    if x.shape[0] == 0:
        return x
    return cutout(randaugment(weak(x, flip)))


VIEWS = {"weak": weak, "strong": strong, "none": lambda x, flip=True: x}
