"""Open-world building blocks shared by ORCA, FedoSSL and the FedoSSL server.

Pure torch / numpy (no Flower). Features are compared by cosine similarity, so every
function here L2-normalises its inputs first.

Clustering (FedoSSL):

- :func:`sinkhorn_knopp` turns sample-to-centroid scores into soft assignments whose
  columns are (approximately) equally loaded, so no cluster can swallow the data;
- :func:`balanced_kmeans` is spherical k-means whose assignment step uses them;
- :func:`global_clustering` fits the server's K centroids to all clients' local ones;
- :func:`calibrate` reorders those so that slot ``c`` holds seen class ``c``;
- :func:`suppression_weights` is the uncertainty-aware suppressed loss's class weight.

ORCA's loss pieces: :func:`adaptive_margin`, :func:`margin_cross_entropy`,
:func:`pairwise_positives`, :func:`pairwise_bce`, :func:`entropy_of_mean`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "sinkhorn_knopp", "balanced_kmeans", "global_clustering", "calibrate", "calibrate_in_order",
    "match_to_prototypes", "suppression_weights", "suppressed_loss", "mean_uncertainty", "adaptive_margin",
    "margin_cross_entropy", "pairwise_positives", "pairwise_bce", "entropy_of_mean",
]


# -- clustering -------------------------------------------------------------------
@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, n_iters: int = 10, epsilon: float = 0.05) -> torch.Tensor:
    """Balanced soft assignments from ``scores`` [N, K] (e.g. cosine similarities).

    Solves the entropic transport problem between N samples of mass 1/N and K
    clusters of mass 1/K with kernel ``exp(scores / epsilon)``, by alternately
    rescaling columns and rows (in log space, so small ``epsilon`` cannot overflow).
    Returns Q [N, K]: every row sums to 1 (a sample's soft assignment) and every
    column to about N/K (balanced); more iterations tighten the column sums.
    """
    if scores.ndim != 2 or scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ValueError(f"scores must be a non-empty [N, K] matrix, got {tuple(scores.shape)}")
    n, k = scores.shape
    log_q = scores.double() / epsilon
    for _ in range(n_iters):
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - math.log(k)  # clusters: 1/K
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True) - math.log(n)  # samples: 1/N
    return (log_q.exp() * n).to(scores.dtype)


def _as_tensor(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).float()


def _kmeans_pp(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeding on unit vectors (distance 1 - cos); duplicates if N < k."""
    n = x.shape[0]
    idx = [int(torch.randint(n, (1,), generator=gen))]
    d = (1 - x @ x[idx[0]]).clamp_min(0)
    for _ in range(1, k):
        if float(d.sum()) <= 1e-12:  # every point already a centre
            idx.append(int(torch.randint(n, (1,), generator=gen)))
        else:
            idx.append(int(torch.multinomial(d, 1, generator=gen)))
        d = torch.minimum(d, (1 - x @ x[idx[-1]]).clamp_min(0))
    return x[idx].clone()


SINKHORN_VARIANTS = ("reference", "log")
INIT_VARIANTS = ("random", "kmeans++")


@torch.no_grad()
def balanced_kmeans(x: torch.Tensor | np.ndarray, k: int, iters: int = 5, seed: int = 0,
                    epsilon: float = 0.05, sinkhorn_iters: int = 10, sinkhorn: str = "log",
                    init: str = "kmeans++") -> tuple[torch.Tensor, torch.Tensor]:
    """Spherical k-means with Sinkhorn-balanced assignments.

    ``x`` [N, D] is L2-normalised; centroids start from ``init`` (seeded by
    ``seed``): ``"kmeans++"``, or ``"random"`` distinct points as the reference's
    local clustering does; each iteration assigns every point to the argmax of its
    balanced soft assignment on cosine similarities and moves each centroid to the
    normalised mean of its points (an empty cluster is re-seeded on a random point).
    ``sinkhorn`` picks the balancing: ``"log"`` is :func:`sinkhorn_knopp` (no
    softmax first), ``"reference"`` is
    :func:`fedssl.global_clustering.sinkhorn_reference` (softmax first, as in
    cugzj/FedoSSL) with at most ``sinkhorn_iters`` iterations.
    Returns (centroids [k, D], unit norm; assignments [N]).
    """
    from fedssl.global_clustering import sinkhorn_reference  # it imports nothing from here

    x = F.normalize(_as_tensor(x), dim=1)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty [N, D] matrix, got {tuple(x.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if sinkhorn not in SINKHORN_VARIANTS or init not in INIT_VARIANTS:
        raise ValueError(f"unknown sinkhorn {sinkhorn!r} or init {init!r}")
    gen = torch.Generator().manual_seed(int(seed) & ((1 << 63) - 1))
    if init == "random" and x.shape[0] >= k:
        centroids = x[torch.randperm(x.shape[0], generator=gen)[:k]].clone()
    else:
        centroids = _kmeans_pp(x, k, gen)
    assign = torch.zeros(x.shape[0], dtype=torch.long)
    for _ in range(iters):
        scores = x @ centroids.T
        q = (sinkhorn_reference(scores, epsilon, max_iters=sinkhorn_iters) if sinkhorn == "reference"
             else sinkhorn_knopp(scores, sinkhorn_iters, epsilon))
        assign = q.argmax(dim=1)
        for j in range(k):
            members = x[assign == j]
            if len(members):
                centroids[j] = F.normalize(members.mean(dim=0), dim=0)
            else:
                centroids[j] = x[int(torch.randint(x.shape[0], (1,), generator=gen))]
    return centroids, assign


def global_clustering(local_centroids: torch.Tensor | np.ndarray, k: int, seed: int = 0,
                      iters: int = 20, epsilon: float = 0.05, sinkhorn: str = "log") -> np.ndarray:
    """The server's K global centroids [k, D] (float32, unit norm), fitted afresh by
    :func:`balanced_kmeans` to the stack of every client's local centroids [M, D]
    (``server.fedossl_clustering = "kmeans"``; the reference's persistent, SGD-refined
    centroids are :func:`fedssl.global_clustering.refine_centroids`)."""
    centroids, _ = balanced_kmeans(local_centroids, k, iters=iters, seed=seed, epsilon=epsilon,
                                   sinkhorn=sinkhorn)
    return centroids.numpy().astype(np.float32)


def _slot_inputs(global_centroids: np.ndarray, class_means: np.ndarray, num_seen: int,
                 valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(centroids [K, D] float64, their unit rows, the unit seen-class means [S, D],
    the valid mask [S]) for :func:`calibrate` and :func:`anchor_seen_slots`."""
    g = np.asarray(global_centroids, dtype=np.float64)
    means = np.asarray(class_means, dtype=np.float64)
    if not 0 <= num_seen <= g.shape[0] or means.shape[0] < num_seen:
        raise ValueError(f"need num_seen <= K and num_seen class means; got num_seen={num_seen}, "
                         f"K={g.shape[0]}, {means.shape[0]} means")
    valid = np.ones(num_seen, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)[:num_seen]

    def unit(a: np.ndarray) -> np.ndarray:
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    return g, unit(g), unit(means[:num_seen]), valid


def _with_leftovers(g: np.ndarray, slot_of: np.ndarray, used: np.ndarray) -> np.ndarray:
    """``g`` reordered by ``slot_of`` (slot -> centroid, -1 = open); the centroids not
    ``used`` fill the open slots in their original order. A [K, D] float32 copy."""
    leftovers = iter(np.flatnonzero(~used))
    for slot in range(len(slot_of)):
        if slot_of[slot] < 0:
            slot_of[slot] = next(leftovers)
    return g[slot_of].astype(np.float32)


def calibrate(global_centroids: np.ndarray, class_means: np.ndarray, num_seen: int,
              valid: np.ndarray | None = None) -> np.ndarray:
    """Reorder ``global_centroids`` [K, D] so that slot ``c < num_seen`` holds seen class c.

    Greedy by cosine similarity, no reuse: repeatedly take the most similar remaining
    (seen class, centroid) pair among the classes whose labeled mean ``class_means[c]``
    is ``valid`` (some client reported it). The centroids left over fill the
    remaining slots, i.e. the unseen slots ``[num_seen, K)`` and the slots of seen
    classes nobody reported, in their original order. Returns a [K, D] float32 copy.
    """
    g, gn, mn, valid = _slot_inputs(global_centroids, class_means, num_seen, valid)
    k = g.shape[0]
    sim = mn @ gn.T  # [num_seen, K]
    sim[~valid] = -np.inf
    slot_of = np.full(k, -1)  # slot -> centroid index
    used = np.zeros(k, dtype=bool)
    for _ in range(int(valid.sum())):
        c, j = np.unravel_index(np.argmax(sim), sim.shape)
        slot_of[c], used[j] = j, True
        sim[c, :] = -np.inf
        sim[:, j] = -np.inf
    return _with_leftovers(g, slot_of, used)


def calibrate_in_order(global_centroids: np.ndarray, class_means: np.ndarray, num_seen: int,
                       valid: np.ndarray | None = None) -> np.ndarray:
    """The reference's calibration: the seen classes in index order, each taking the
    centroid most similar to its labeled mean that no earlier class took.

    The reference code takes a class's top-1 centroid, else its top-2, and fails
    (``list.remove`` of a missing item) when both are taken; here the class then takes
    its most similar free centroid. Classes not ``valid`` are skipped; the centroids
    left over fill the remaining slots in their original order, as in
    :func:`calibrate`. Returns a [K, D] float32 copy.
    """
    g, gn, mn, valid = _slot_inputs(global_centroids, class_means, num_seen, valid)
    k = g.shape[0]
    sim = mn @ gn.T  # [num_seen, K]
    slot_of = np.full(k, -1)
    used = np.zeros(k, dtype=bool)
    for c in np.flatnonzero(valid):
        j = next(j for j in np.argsort(-sim[c], kind="stable") if not used[j])
        slot_of[c], used[j] = j, True
    return _with_leftovers(g, slot_of, used)


def anchor_seen_slots(global_centroids: np.ndarray, class_means: np.ndarray, num_seen: int,
                      valid: np.ndarray | None = None) -> np.ndarray:
    """Slot ``c < num_seen`` := the unit-norm labeled mean of seen class c; the other
    slots get the centroids *least* like any seen class.

    The alternative to :func:`calibrate` (``server.fedossl_seen_slots = "class_mean"``).
    A calibrated seen slot is a clustered centroid, and a centroid that has absorbed
    two similar seen classes (coat and pullover) pulls and pseudo-labels both as one:
    the seen-accuracy cost measured in docs/openworld.md. A labeled mean is pure by
    construction. The slots left over (unseen ones, and seen classes nobody reported)
    take the ``K - #valid`` centroids with the lowest maximum cosine similarity to the
    valid class means, in their original order: a seen class split over two centroids
    then costs a redundant centroid, not an unseen class's, as greedy matching could.
    Returns a [K, D] float32 array.
    """
    g, gn, mn, valid = _slot_inputs(global_centroids, class_means, num_seen, valid)
    k = g.shape[0]
    out = np.empty_like(g)
    out[:num_seen][valid] = mn[valid]
    free = [slot for slot in range(k) if slot >= num_seen or not valid[slot]]
    novelty = (gn @ mn[valid].T).max(axis=1) if valid.any() else np.zeros(k)
    chosen = np.sort(np.argsort(novelty, kind="stable")[:len(free)])
    out[free] = g[chosen]
    return out.astype(np.float32)


def match_to_prototypes(centroids: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Hungarian matching of centroids [M, D] to prototypes [M, D] by cosine similarity;
    returns ``perm`` [M] with centroid i matched to prototype ``perm[i]``."""
    sim = F.normalize(centroids.detach().float(), dim=1) @ F.normalize(prototypes.detach().float(), dim=1).T
    from scipy.optimize import linear_sum_assignment  # lazy: 0.3 s of worker cold start

    rows, cols = linear_sum_assignment(sim.cpu().numpy(), maximize=True)
    perm = torch.empty(len(rows), dtype=torch.long)
    perm[torch.as_tensor(rows)] = torch.as_tensor(cols, dtype=torch.long)
    return perm


def suppression_weights(class_counts: torch.Tensor | np.ndarray, beta: float) -> torch.Tensor:
    """FedoSSL's class weights ``w_k = beta ** (1 - N_k / N_max)`` [K].

    The most often predicted class gets weight 1, a class never predicted gets
    ``beta``. Without any count every class gets 1 (the limit of equal counts).
    """
    n = _as_tensor(class_counts).double()
    n_max = float(n.max()) if n.numel() else 0.0
    if n_max <= 0:
        return torch.ones_like(n, dtype=torch.float32)
    return (beta ** (1 - n / n_max)).float()


def suppressed_loss(probs: torch.Tensor, class_weight: torch.Tensor) -> torch.Tensor:
    """FedoSSL's uncertainty-aware suppressed loss on unlabeled predictions [N, K]:
    ``mean_i w_{y_hat_i} (1 - max_k p_ik) / K``, the reference's L1 distance between
    ``p_i`` and ``p_i`` with its top entry set to 1, averaged over the K entries."""
    if probs.shape[0] == 0:
        return probs.sum() * 0.0
    max_p, y_hat = probs.max(dim=1)
    return (class_weight[y_hat] * (1 - max_p)).mean() / probs.shape[1]


# -- ORCA's loss pieces ------------------------------------------------------------
def mean_uncertainty(probs: torch.Tensor) -> float:
    """u = mean over samples of (1 - max_k p_k); 0 for an empty batch."""
    if probs.shape[0] == 0:
        return 0.0
    return float((1 - probs.max(dim=1).values).mean())


def adaptive_margin(uncertainty: float, cap: float = 0.5) -> float:
    """ORCA's margin on the seen-class cosine: ``-min(u, cap)``. It is negative, so
    labeled samples are learned *less* eagerly while unlabeled data is uncertain,
    and it shrinks to 0 as the model grows confident."""
    return -min(max(uncertainty, 0.0), cap)


def margin_cross_entropy(logits: torch.Tensor, y: torch.Tensor, margin: float,
                         scale: float = 10.0) -> torch.Tensor:
    """Cross-entropy after subtracting ``scale * margin`` from each sample's true-class
    logit (``logits`` are ``scale * cos``, so ``margin`` is in cosine units). Zero,
    with gradient, when there are no labels."""
    if y.numel() == 0:
        return logits.sum() * 0.0
    onehot = F.one_hot(y, logits.shape[1]).to(logits.dtype)
    return F.cross_entropy(logits - scale * margin * onehot, y)


@torch.no_grad()
def pairwise_positives(features: torch.Tensor, y_l: torch.Tensor) -> torch.Tensor:
    """Index of each sample's positive partner within the batch [N].

    The batch is ``n_l = len(y_l)`` labeled samples followed by unlabeled ones. A
    labeled sample's positive is a random *other* labeled sample of its class (itself
    when it is its class's only one); an unlabeled sample's is its nearest neighbour
    by cosine similarity of ``features`` among all other samples in the batch.
    Randomness comes from torch's global RNG (seeded by the trainer).
    """
    n, n_l = features.shape[0], y_l.numel()
    eye = torch.eye(n, dtype=torch.bool, device=features.device)
    pos = torch.arange(n, device=features.device)
    if n_l:
        same = (y_l[:, None] == y_l[None, :]) & ~eye[:n_l, :n_l]
        score = torch.rand(n_l, n_l, device=features.device).masked_fill(~same, -1.0)
        best = score.argmax(dim=1)
        pos[:n_l] = torch.where(same.any(dim=1), best, pos[:n_l])
    if n > n_l and n > 1:
        z = F.normalize(features.float(), dim=1)
        sim = (z[n_l:] @ z.T).masked_fill(eye[n_l:], -float("inf"))
        pos[n_l:] = sim.argmax(dim=1)
    return pos


def pairwise_bce(p: torch.Tensor, p_pos: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """BCE(<p_i, p'_pos(i)>, 1) = mean_i -log <p_i, p'_pos(i)>: a sample and its
    positive should put their probability mass on the same class."""
    sim = (p * p_pos).sum(dim=1).clamp(eps, 1.0)
    return -sim.log().mean()


def entropy_of_mean(p: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Entropy of the batch-mean prediction (maximised by ORCA so that unlabeled
    samples do not collapse into a few classes). At most log K."""
    mean = p.mean(dim=0).clamp_min(eps)
    return -(mean * mean.log()).sum()
