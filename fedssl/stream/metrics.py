"""Continual-learning metrics of an accuracy matrix.

``R[i][j]``: accuracy of the global model after stage i (its last round) on the test
split shown in stage j's domain; ``b[j]``: the initial (untrained) model's accuracy on
domain j. T stages, all indices 0-based.

- final average accuracy: mean_j R[T-1][j] (every domain has been learned by then)
- average incremental accuracy: mean_i ( mean_{j<=i} R[i][j] ) (Rebuffi et al., iCaRL)
- forgetting (Chaudhry et al., 2018, "Riemannian Walk"): mean over j < T-1 of
  max_{l in [j, T-2]} R[l][j] - R[T-1][j], the drop from the best accuracy the domain
  ever had before the last stage to its final one (positive = forgotten)
- backward transfer (Lopez-Paz & Ranzato, 2017, GEM): sum_{j<T-1} (R[T-1][j] - R[j][j]) / (T-1)
- forward transfer (GEM): sum_{j>=1} (R[j-1][j] - b[j]) / (T-1)

BWT and FWT are the GEM paper's equations (divided by T-1). GEM's code
(``metrics/metrics.py``, ``confusion_matrix``) takes ``bwt.mean()`` / ``fwt.mean()``
over all T tasks, zero terms included, i.e. (T-1)/T of these figures.
With T = 1 the transfer and forgetting figures are undefined (NaN).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def final_average_accuracy(r: np.ndarray) -> float:
    return float(np.mean(r[-1]))


def average_incremental_accuracy(r: np.ndarray) -> float:
    return float(np.mean([np.mean(r[i, :i + 1]) for i in range(len(r))]))


def forgetting(r: np.ndarray) -> float:
    t = len(r)
    if t < 2:
        return math.nan
    return float(np.mean([r[j:t - 1, j].max() - r[t - 1, j] for j in range(t - 1)]))


def backward_transfer(r: np.ndarray) -> float:
    t = len(r)
    return float(sum(r[t - 1, j] - r[j, j] for j in range(t - 1)) / (t - 1)) if t > 1 else math.nan


def forward_transfer(r: np.ndarray, b: Sequence[float]) -> float:
    t = len(r)
    return float(sum(r[j - 1, j] - b[j] for j in range(1, t)) / (t - 1)) if t > 1 else math.nan


def summarize(r: Sequence[Sequence[float]], b: Sequence[float]) -> dict[str, float]:
    """Every figure above from a complete T x T matrix ``r`` and baseline ``b``."""
    m = np.asarray(r, dtype=np.float64)
    return {"final_avg_acc": final_average_accuracy(m), "avg_incremental_acc": average_incremental_accuracy(m),
            "forgetting": forgetting(m), "bwt": backward_transfer(m), "fwt": forward_transfer(m, b)}
