"""Test-set metrics for closed- and open-world SSL.

Seen accuracy is plain accuracy on seen-class samples. Unseen and all accuracy use
Hungarian matching (``scipy.optimize.linear_sum_assignment``) of predicted ids to
true classes on the respective samples, as in ORCA / FedoSSL evaluation. Unseen
accuracy is then split into locally-unseen (class on >= 2 clients) and
globally-unseen (class on exactly 1 client) classes under the same matching.

That unseen-only matching may map an unseen class to a *seen* class's output (all
sneakers predicted "sandal" then count as sneakers found, while seen accuracy counts
the sandals in that output too). So open-world evaluation also reports, under one
matching over all samples in which each seen output stays its own class's (as seen
accuracy counts it) and no output serves two classes: ``acc_unseen_strict``,
``discovered`` and the confusion matrix; and ``absorbed_<k>``, the share of unseen
class k predicted as a seen output. Holding the seen outputs matters where an unseen
class outnumbers the seen class in that class's output: the unconstrained matching
(``acc_all``'s) then hands the seen output to the unseen class.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def hungarian_map(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, fixed: int = 0) -> np.ndarray:
    """Return ``m`` with ``m[pred_id] = class`` maximising matched counts, with the
    outputs ``[0, fixed)`` held to their own classes."""
    size = max(num_classes, int(y_pred.max(initial=0)) + 1, int(y_true.max(initial=0)) + 1)
    counts = np.zeros((size, size), dtype=np.int64)
    np.add.at(counts, (y_pred, y_true), 1)
    # a bonus above every sample count together: no assignment gives up a held pair
    counts[np.arange(fixed), np.arange(fixed)] += y_true.size + 1
    from scipy.optimize import linear_sum_assignment  # lazy: 0.3 s of worker cold start

    rows, cols = linear_sum_assignment(counts, maximize=True)
    mapping = np.arange(size)
    mapping[rows] = cols
    return mapping


def strict_openworld(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int,
                     num_seen: int) -> dict[str, float]:
    """Unseen-class metrics under the all-sample matching with the seen outputs held to
    their classes (output -> class; every unseen class then owns an unseen output):

    - ``acc_unseen_strict``: accuracy on unseen-class samples under that matching;
    - ``discovered``: unseen classes that get at least half of their samples into the
      output they own;
    - ``absorbed_<k>``: share of unseen class k's samples predicted as a seen class's
      output (ids < ``num_seen``), whatever the matching.
    """
    mapping = hungarian_map(y_true, y_pred, num_classes, fixed=num_seen)
    unseen = y_true >= num_seen
    out = {"acc_unseen_strict": float((mapping[y_pred[unseen]] == y_true[unseen]).mean())
           if unseen.any() else float("nan"), "discovered": 0.0}
    for k in range(num_seen, num_classes):
        sel = y_true == k
        if sel.any() and (mapping[y_pred[sel]] == k).mean() >= 0.5:
            out["discovered"] += 1
        out[f"absorbed_{k}"] = float((y_pred[sel] < num_seen).mean()) if sel.any() else float("nan")
    return out


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int,
                     num_seen: int) -> dict[str, list]:
    """Counts of true class (row) x predicted output (column), the columns ordered by
    :func:`strict_openworld`'s matching: column j is the output matched to class j (a
    seen class's own output), so the diagonal is what ``acc_seen`` and
    ``acc_unseen_strict`` count, and an unseen row's mass in seen columns is its
    absorption. ``output_of_class[j]`` is that output's id; outputs matched to no
    class (more outputs than classes) are left out."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    mapping = hungarian_map(y_true, y_pred, num_classes, fixed=num_seen)
    output_of = [int(np.flatnonzero(mapping == j)[0]) for j in range(num_classes)]
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    for j, o in enumerate(output_of):
        np.add.at(counts[:, j], y_true[y_pred == o], 1)
    return {"output_of_class": output_of, "counts": counts.tolist()}


def pseudo_label_accuracy(pseudo_label: torch.Tensor, y_true: torch.Tensor | None,
                          mask: torch.Tensor) -> float | None:
    """Accuracy of the confident (``mask`` > 0) pseudo-labels on the samples whose true
    label is known (``y_true`` >= 0; exported shards store -1 for hidden labels), or
    None when no such sample exists, so the step emits no ``pl_acc`` at all."""
    if y_true is None:
        return None
    w = mask.float() * (y_true >= 0).float()
    if w.sum() <= 0:
        return None
    return float(((pseudo_label == y_true).float() * w).sum() / w.sum())


def cluster_accuracy(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Accuracy after the best one-to-one relabelling of predictions."""
    if y_true.size == 0:
        return float("nan")
    return float((hungarian_map(y_true, y_pred, num_classes)[y_pred] == y_true).mean())


def openworld_accuracy(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    num_classes: int,
    num_seen: int,
    local_unseen: Sequence[int] = (),
    global_unseen: Sequence[int] = (),
) -> dict[str, float]:
    """acc_all, acc_seen, acc_unseen, acc_local_unseen, acc_global_unseen,
    ``seen_as_unseen`` (share of seen-class samples given an unseen id: what novel
    clusters take from the seen classes), the strict unseen metrics
    (:func:`strict_openworld`) and per-class accuracy (``acc_class_<k>``, unseen
    classes under the unseen-only matching). Unseen entries are NaN without unseen
    classes (and ``absorbed_<k>`` absent)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    seen = y_true < num_seen
    open_world = num_seen < num_classes
    out = {
        "acc_all": cluster_accuracy(y_true, y_pred, num_classes)
        if open_world else float((y_true == y_pred).mean()) if y_true.size else float("nan"),
        "acc_seen": float((y_pred[seen] == y_true[seen]).mean()) if seen.any() else float("nan"),
        "acc_unseen": float("nan"),
        "acc_local_unseen": float("nan"),
        "acc_global_unseen": float("nan"),
        "seen_as_unseen": float((y_pred[seen] >= num_seen).mean())
        if seen.any() and open_world else float("nan"),
        "acc_unseen_strict": float("nan"),
        "discovered": float("nan"),
    }
    if open_world and y_true.size:
        out.update(strict_openworld(y_true, y_pred, num_classes, num_seen))
    correct = (y_pred == y_true).astype(np.float64)
    if open_world and (~seen).any():
        unseen_map = hungarian_map(y_true[~seen], y_pred[~seen], num_classes)
        correct[~seen] = unseen_map[y_pred[~seen]] == y_true[~seen]
        out["acc_unseen"] = float(correct[~seen].mean())
        for key, classes in (("acc_local_unseen", local_unseen), ("acc_global_unseen", global_unseen)):
            sel = np.isin(y_true, list(classes))
            if sel.any():
                out[key] = float(correct[sel].mean())
    for k in range(num_classes):
        sel = y_true == k
        out[f"acc_class_{k}"] = float(correct[sel].mean()) if sel.any() else float("nan")
    return out


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> tuple[np.ndarray, torch.Tensor]:
    """Logits for a normalised float tensor [N, C, H, W] (evaluation mode)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    logits = torch.cat([model(x[i:i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return logits.argmax(1).numpy(), logits


def evaluate_logits(
    logits: torch.Tensor,
    y: np.ndarray,
    num_classes: int,
    num_seen: int,
    **unseen: Sequence[int],
) -> dict[str, float]:
    """Metrics of a model's ``logits`` [N, K] on a held-out split with labels ``y``;
    ``unseen`` (``local_unseen``, ``global_unseen``) goes to :func:`openworld_accuracy`.
    ``loss`` is cross-entropy on the seen-class samples (cluster ids of unseen classes
    carry no fixed label). ``top_class_share`` is the share of samples given the most
    frequent prediction: near 1 the model has collapsed to one output, which the loss
    alone does not reveal."""
    y_pred = logits.argmax(1).numpy()
    y_t = torch.as_tensor(y, dtype=torch.long)
    seen = y_t < num_seen
    loss = float(F.cross_entropy(logits[seen], y_t[seen])) if seen.any() else float("nan")
    top = float(np.bincount(y_pred).max() / len(y_pred)) if len(y_pred) else float("nan")
    return {"loss": loss, **openworld_accuracy(y, y_pred, num_classes, num_seen, **unseen),
            "top_class_share": top}
