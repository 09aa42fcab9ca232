"""FedoSSL's server clustering as the reference code (cugzj/FedoSSL) does it.

Pure torch / numpy, no Flower. The reference keeps K global centroids C [K, D] for
the whole run (a bias-free linear layer of its global model) and, after every
round, refines them on the stack Z [M, D] of all clients' local centroids:

    repeat ``steps`` (500) times:
        Q = sinkhorn_reference(Z C^T)                 # balanced targets, no gradient
        P = softmax(normalize(Z) C^T / T)             # T = 0.1
        loss = -mean_i cos(Q_i, P_i)
        one SGD step on C (lr 0.01, momentum 0.9, weight decay 1e-4)
        C <- rows of C normalised to unit length

The optimiser is created afresh each round (its momentum does not outlive the
round), so the state that persists across rounds is C alone. The calibration that
follows (:func:`fedssl.openworld.calibrate`) permutes C so that slot c holds seen
class c, and the permuted C is what the next round refines: unseen slots keep
their place from round to round unless the seen classes' matching changes.

:func:`sinkhorn_reference` is the reference's Sinkhorn-Knopp (``sknopp``): it
row-normalises ``exp(scores / epsilon)`` with a softmax first (epsilon = 1/25),
then alternates the centroid and sample scalings, stopping when the sample
scaling changes by less than ``tol`` (checked every 10 iterations).

Deviations from the reference that remain (measurements: docs/openworld.md):

- float64 on the CPU instead of float32 (on a GPU), so that runs and resumes are
  bit-for-bit deterministic;
- the starting centroids are drawn from the run's seed; the distribution is the
  reference's (PyTorch's default ``nn.Linear`` init).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fedssl.optim import SGD
from fedssl.threads import one_thread

__all__ = ["sinkhorn_reference", "init_centroids", "refine_centroids"]

REFERENCE_EPSILON = 1.0 / 25  # sknopp's lamd = 25
REFERENCE_STEPS = 500


@torch.no_grad()
def sinkhorn_reference(scores: torch.Tensor, epsilon: float = REFERENCE_EPSILON, max_iters: int = 100,
                       tol: float = 1e-2) -> torch.Tensor:
    """Balanced soft assignments [N, K] from ``scores`` [N, K], the reference's way.

    ``P = softmax(scores / epsilon)`` row-wise; then with centroid scaling r [K] and
    sample scaling c [N] (c starts at 1/N): ``r = (1/K) / (P^T c)``,
    ``c = (1/N) / (P r)``, until ``sum |c_old / c_new - 1| < tol`` (tested on
    iterations 0, 10, 20, ...). Returns ``N * c_i P_ik r_k``: rows sum to 1 exactly,
    columns to about N/K.
    """
    if scores.ndim != 2 or scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ValueError(f"scores must be a non-empty [N, K] matrix, got {tuple(scores.shape)}")
    n, k = scores.shape
    p = torch.softmax(scores.double() / epsilon, dim=1)  # [N, K]
    c = torch.full((n,), 1.0 / n, dtype=torch.float64)
    r = torch.full((k,), 1.0 / k, dtype=torch.float64)
    err = float("inf")
    for it in range(max_iters):
        r = (1.0 / k) / (p.T @ c)
        c_new = (1.0 / n) / (p @ r)
        if it % 10 == 0:
            err = float(torch.nansum(torch.abs(c / c_new - 1)))
        c = c_new
        if err < tol:
            break
    return (p * c[:, None] * r[None, :] * n).to(scores.dtype)


def init_centroids(k: int, dim: int, seed: int) -> np.ndarray:
    """The reference's starting C [k, dim]: PyTorch's default init of a bias-free
    ``nn.Linear(dim, k)`` (uniform in +-1/sqrt(dim)), drawn from ``seed``. Not yet
    unit-norm: the first refinement step normalises it."""
    gen = torch.Generator().manual_seed(int(seed) & ((1 << 63) - 1))
    bound = 1.0 / np.sqrt(dim)
    return ((torch.rand(k, dim, generator=gen, dtype=torch.float64) * 2 - 1) * bound).numpy()


def refine_centroids(centroids: np.ndarray, local_centroids: np.ndarray, steps: int = REFERENCE_STEPS,
                     lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 1e-4,
                     temperature: float = 0.1, epsilon: float = REFERENCE_EPSILON) -> np.ndarray:
    """``steps`` SGD steps of the reference's global clustering loss on C (see the
    module docstring), from ``centroids`` [K, D] on ``local_centroids`` [M, D].
    Deterministic (no randomness). Returns the new C [K, D] float64, unit-norm rows."""
    z = torch.as_tensor(np.asarray(local_centroids), dtype=torch.float64)
    c = torch.nn.Parameter(torch.as_tensor(np.asarray(centroids), dtype=torch.float64).clone())
    if z.ndim != 2 or c.ndim != 2 or z.shape[1] != c.shape[1] or z.shape[0] == 0:
        raise ValueError(f"need local centroids [M, D] and centroids [K, D]; got {tuple(z.shape)}, "
                         f"{tuple(c.shape)}")
    opt = SGD([c], lr=lr, momentum=momentum, weight_decay=weight_decay)
    z_hat = F.normalize(z, dim=1)
    with one_thread():  # same bits on any machine; 14x faster next to busy workers
        for _ in range(steps):
            q = sinkhorn_reference(z @ c.detach().T, epsilon=epsilon)  # reference: raw Z, not normalised
            p = torch.softmax(z_hat @ c.T / temperature, dim=1)
            loss = -F.cosine_similarity(q, p, dim=-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                c.copy_(F.normalize(c, dim=1))
    return c.detach().numpy()

