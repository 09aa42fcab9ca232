"""Batched augmentation draws from today's distribution and equals the per-image path.

The reference is torchvision's own ``v2.RandAugment(num_ops=2, magnitude=10)``, which
fedssl applied image by image before augmentation was batched, and the previous
pad-crop-flip weak view (kept here verbatim as ``_weak_per_pad``).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from fedssl.data import augment as A


def _images(n: int, c: int, side: int, seed: int = 0) -> torch.Tensor:
    """Structured uint8 images (smooth blobs + noise) so that contrast, equalize and
    autocontrast see real histograms, not uniform noise."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    cy, cx = torch.rand(2, n, 1, 1, generator=g) * side
    blob = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (side / 5) ** 2))
    img = 200 * blob[:, None] * torch.rand(n, c, 1, 1, generator=g) + 30 * torch.rand(n, c, side, side, generator=g)
    return img.clamp(0, 255).to(torch.uint8)


SHAPES = [(1, 28), (3, 32)]  # Fashion-MNIST, CIFAR


def _torchvision_op(img: torch.Tensor, op: str, magnitude: float) -> torch.Tensor:
    # The very call v2.RandAugment.forward makes for one image once it has drawn op and sign.
    ra = v2.RandAugment(num_ops=2, magnitude=10)
    return ra._apply_image_or_video_transform(img, op, magnitude, interpolation=ra.interpolation, fill=ra._fill)


def _signed_magnitude(op: str, negate: bool, h: int, w: int) -> float:
    m = A.randaugment_magnitude(op, h, w)
    return -m if negate and op in A.SIGNED else m


def test_op_pool_magnitudes_and_signs_are_torchvisions():
    space = v2.RandAugment._AUGMENTATION_SPACE
    assert A.RANDAUGMENT_OPS == tuple(space)
    for side in (28, 32):
        for op, (magnitudes_fn, signed) in space.items():
            mags = magnitudes_fn(A.NUM_BINS, side, side)
            expected = 0.0 if mags is None else float(mags[A.MAGNITUDE_BIN])
            assert A.randaugment_magnitude(op, side, side) == expected, op
            assert (op in A.SIGNED) == (signed and mags is not None), op


@pytest.mark.parametrize("c,side", SHAPES)
@pytest.mark.parametrize("op", A.RANDAUGMENT_OPS)
def test_each_op_batched_equals_torchvision_per_image(op, c, side):
    x = _images(24, c, side)
    for negate in ((False, True) if op in A.SIGNED else (False,)):
        ops = torch.tensor([[A.RANDAUGMENT_OPS.index(op)] * len(x), [0] * len(x)])  # then Identity
        got = A.randaugment(x, ops, torch.full(ops.shape, negate))
        m = _signed_magnitude(op, negate, side, side)
        want = torch.stack([_torchvision_op(img, op, m) for img in x])
        assert torch.equal(got, want), (op, negate)
        if op != "Identity" and (op != "Color" or c == 3):  # saturation is a no-op on grayscale
            assert not torch.equal(got, x), f"{op} changed nothing"


@pytest.mark.parametrize("c,side", SHAPES)
def test_mixed_batch_equals_torchvision_image_by_image(c, side):
    x = _images(200, c, side, seed=1)
    torch.manual_seed(5)
    ops, negate = A.sample_randaugment(len(x))
    got = A.randaugment(x, ops, negate)
    want = []
    for i, img in enumerate(x):
        for slot in range(A.NUM_OPS):
            op = A.RANDAUGMENT_OPS[ops[slot, i]]
            img = _torchvision_op(img, op, _signed_magnitude(op, bool(negate[slot, i]), side, side))
        want.append(img)
    assert torch.equal(got, torch.stack(want))


def test_randaugment_uses_exactly_the_sampled_draws():
    x = _images(64, 1, 28)
    torch.manual_seed(11)
    implicit = A.randaugment(x)
    torch.manual_seed(11)
    assert torch.equal(implicit, A.randaugment(x, *A.sample_randaugment(len(x))))


def _within(count: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def test_op_frequencies_signs_and_independence_match_randaugment():
    # Per image and slot: op uniform over 14, a signed op negated with probability 1/2,
    # slots and images independent. Tolerance: 5 binomial standard deviations.
    torch.manual_seed(0)
    n = 20_000
    ops, negate = A.sample_randaugment(n)
    assert ops.shape == negate.shape == (A.NUM_OPS, n)
    k = len(A.RANDAUGMENT_OPS)
    counts = torch.bincount(ops.flatten(), minlength=k)
    for op, cnt in zip(A.RANDAUGMENT_OPS, counts.tolist()):
        assert _within(cnt, A.NUM_OPS * n, 1 / k), (op, cnt)
    signed = torch.tensor([op in A.SIGNED for op in A.RANDAUGMENT_OPS])[ops]
    assert _within(int(negate[signed].sum()), int(signed.sum()), 0.5)
    assert _within(int((ops[0] == ops[1]).sum()), n, 1 / k)  # slot 2 independent of slot 1
    assert _within(int((ops[0, 1:] == ops[0, :-1]).sum()), n - 1, 1 / k)  # neighbours independent
    assert _within(int((negate[0] == negate[1]).sum()), n, 0.5)


def _weak_per_pad(x: torch.Tensor, flip: bool = True) -> torch.Tensor:
    """The weak view before batching work: pad, crop at a random offset, flip."""
    b, _, h, w = x.shape
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


@pytest.mark.parametrize("c,side", SHAPES)
@pytest.mark.parametrize("flip", [True, False])
def test_weak_view_is_unchanged(c, side, flip):
    x = _images(300, c, side)
    torch.manual_seed(3)
    want = _weak_per_pad(x, flip)
    torch.manual_seed(3)
    assert torch.equal(A.weak(x, flip), want)


@pytest.mark.parametrize("view", ["weak", "strong"])
def test_same_seed_same_batch_other_seed_other_batch(view):
    x = _images(64, 3, 32)
    outs = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        outs.append(A.VIEWS[view](x))
    assert outs[0].dtype == torch.uint8 and outs[0].shape == x.shape
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], outs[2])


def test_each_sample_draws_its_own_augmentation():
    x = _images(1, 1, 28).expand(128, -1, -1, -1).contiguous()  # one image, 128 times
    torch.manual_seed(0)
    distinct_weak = len({bytes(v.numpy()) for v in A.weak(x)})
    distinct_strong = len({bytes(v.numpy()) for v in A.strong(x)})
    assert distinct_weak > 40  # 25 offsets x 2 flips
    assert distinct_strong > 120


def test_cutout_fills_a_clipped_grey_square_of_half_the_side():
    torch.manual_seed(0)
    out = A.cutout(torch.zeros(500, 1, 28, 28, dtype=torch.uint8))
    holes = out[:, 0] == A.CUTOUT_FILL
    assert torch.equal(out[:, 0][~holes], torch.zeros_like(out[:, 0][~holes]))
    rows, cols = holes.any(2).sum(1), holes.any(1).sum(1)
    assert rows.max() == cols.max() == 2 * (14 // 2) + 1 and rows.min() >= 8  # centre inside
    assert torch.equal(holes.sum((1, 2)), rows * cols)  # rectangles


def test_empty_batches_pass_through():
    x = torch.zeros(0, 1, 28, 28, dtype=torch.uint8)
    for view in A.VIEWS.values():
        assert view(x).shape == x.shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_views_stay_on_the_device_and_match_the_cpu_draws():
    x = _images(128, 3, 32)
    for view in ("weak", "strong"):
        torch.manual_seed(4)
        cpu = A.VIEWS[view](x)
        torch.manual_seed(4)
        gpu = A.VIEWS[view](x.cuda())
        assert gpu.device.type == "cuda" and gpu.dtype == torch.uint8
        # Same draws (CPU RNG); pixels equal except where a float kernel rounds differently.
        assert (gpu.cpu() != cpu).float().mean() < 1e-3, view
