"""Domains: deterministic image corruptions of Fashion-MNIST-C / MNIST-C.

Re-implemented (numpy + scipy only, no OpenCV/ImageMagick) from the corruption code of
google-research/mnist-c as used by testingautomated-usi/fashion-mnist-c, with its
severity tables (severity 1..5):

- ``rotate``: by +-c radians about the image centre (13.5, 13.5), bilinear, zero outside;
  c = [0.2, 0.4, 0.6, 0.8, 1.0]; the sign is drawn per image (as the reference does)
- ``contrast``: (x - mean) * c + mean per image, c = [0.4, 0.3, 0.2, 0.1, 0.05]
- ``gaussian_noise``: x + N(0, c) on [0, 1], c = [0.08, 0.12, 0.18, 0.26, 0.38]
- ``gaussian_blur``: Gaussian filter, sigma c = [1, 2, 3, 4, 6] (skimage's ``gaussian``:
  scipy's filter with mode ``nearest``, truncate 4)
- ``inverse``: 255 - x (no severity)
- ``identity``: the clean images

Outputs are clipped to [0, 255] and truncated to uint8, as the reference's generator
stores them. The random draws of image ``i`` of a split come from a generator seeded by
(run seed, domain, split, i), so an image's corruption does not depend on which client
holds it or which other images are transformed with it.
"""

from __future__ import annotations

import numpy as np

#: severity tables of the reference (index = severity - 1)
SEVERITY = {
    "rotate": (0.2, 0.4, 0.6, 0.8, 1.0),
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
    "gaussian_blur": (1.0, 2.0, 3.0, 4.0, 6.0),
    "inverse": (0.0,) * 5,
    "identity": (0.0,) * 5,
}
#: the reference functions' default severities (used when stream.severities is empty)
DEFAULT_SEVERITY = {"rotate": 2, "contrast": 4, "gaussian_noise": 5, "gaussian_blur": 2, "inverse": 1,
                    "identity": 1}
DOMAINS = tuple(SEVERITY)
_TAG = 0xD0A1


def _rngs(seed: int, domain: str, split: int, index: np.ndarray) -> list[np.random.Generator]:
    d = DOMAINS.index(domain)
    return [np.random.default_rng([_TAG, seed, d, split, int(i)]) for i in index]


def _rotate(x: np.ndarray, signs: np.ndarray, angle: float) -> np.ndarray:
    """Rotate [N, H, W] float images by ``signs * angle`` radians (skimage ``warp`` with
    ``AffineTransform(rotation)`` about the centre: output (r, c) reads input at
    (sin*c' + cos*r', cos*c' - sin*r') + centre, with c' = c - centre, r' = r - centre)."""
    n, h, w = x.shape
    ctr_r, ctr_c = (h - 1) / 2, (w - 1) / 2
    rr, cc = np.meshgrid(np.arange(h) - ctr_r, np.arange(w) - ctr_c, indexing="ij")
    th = (signs * angle)[:, None, None]
    cos, sin = np.cos(th), np.sin(th)
    src_c = cos * cc - sin * rr + ctr_c
    src_r = sin * cc + cos * rr + ctr_r
    from scipy import ndimage  # here, not at the top: every run imports this module, few rotate

    img = np.broadcast_to(np.arange(n)[:, None, None], src_r.shape).astype(np.float64)
    return ndimage.map_coordinates(x, [img, src_r, src_c], order=1, mode="constant", cval=0.0)


def corrupt(x: np.ndarray, domain: str, severity: int, *, seed: int, split: int,
            index: np.ndarray) -> np.ndarray:
    """``x`` (uint8 [N, H, W, C]) in ``domain`` at ``severity`` (1..5). ``index``: each
    image's position in its split (``split`` 0 = train, 1 = test), which with ``seed``
    fixes its random draws. Returns a new uint8 array of the same shape."""
    if domain not in SEVERITY:
        raise ValueError(f"unknown domain {domain!r} (choose from {', '.join(DOMAINS)})")
    if domain == "identity" or len(x) == 0:
        return np.array(x, dtype=np.uint8)
    if domain == "inverse":  # the reference's 255 - x, exact on the 0..255 scale
        return (255 - x.astype(np.int16)).astype(np.uint8)
    c = SEVERITY[domain][severity - 1]
    f = x.astype(np.float64) / 255.0
    if domain == "contrast":
        means = f.mean(axis=(1, 2), keepdims=True)
        out = (f - means) * c + means
    elif domain == "gaussian_noise":
        noise = np.stack([g.normal(size=f.shape[1:], scale=c) for g in _rngs(seed, domain, split, index)])
        out = f + noise
    elif domain == "gaussian_blur":
        from scipy import ndimage

        out = ndimage.gaussian_filter(f, sigma=(0, c, c, 0), mode="nearest", truncate=4.0)
    else:  # rotate: one sign per image, drawn as the reference does (choice of -1, 1)
        signs = np.array([g.choice([-1, 1]) for g in _rngs(seed, domain, split, index)], dtype=np.float64)
        chans = [_rotate(f[..., k], signs, c) for k in range(f.shape[-1])]
        out = np.stack(chans, axis=-1)
    return (np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)


def stage_domains(stream_cfg: object) -> list[tuple[str, int]]:
    """(domain, severity) of each stage of a validated ``[stream]`` section."""
    from fedssl.config.validate import stream_lists

    domains, sev = stream_lists(stream_cfg)
    domains = domains[:stream_cfg.stages]  # type: ignore[attr-defined]
    if not sev:
        sev = [DEFAULT_SEVERITY[d] for d in domains]
    elif len(sev) == 1:
        sev = sev * len(domains)
    return list(zip(domains, sev[:len(domains)]))
