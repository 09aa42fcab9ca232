"""Checks every client update passes before it may touch the global model."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, RecordDict

from fedssl.flower_compat import decode_array


def check_update(content: RecordDict, global_arrays: dict[str, np.ndarray],
                 max_examples: int | None, max_update_norm: float = 0.0,
                 weight_key: str = "num-examples") -> str | None:
    """None if the reply is acceptable, else a one-line reason.

    - exactly the global model's keys (in any order: :func:`in_global_order` rebuilds
      the update before aggregation), with the same dtypes and shapes;
    - every value finite;
    - ``num-examples`` a positive integer, at most the client's partition size;
    - the strategy's weighting metric ``weight_key``, when it is another, a finite number > 0;
    - ||update - global||_2 <= max_update_norm when that bound is > 0.
    """
    arrays = content.get("arrays")
    metrics = content.get("metrics")
    if not isinstance(arrays, ArrayRecord):
        return "no 'arrays' ArrayRecord in reply"
    if metrics is None or "num-examples" not in metrics:
        return "no 'num-examples' in reply metrics"
    n = metrics["num-examples"]
    if isinstance(n, bool) or not isinstance(n, (int, float)) or n != int(n) or n <= 0:
        return f"num-examples must be a positive integer, got {n!r}"
    if max_examples is not None and n > max_examples:
        return f"num-examples {int(n)} exceeds the partition size {max_examples}"
    if weight_key != "num-examples":
        w = metrics.get(weight_key)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0:
            return f"aggregation weight {weight_key} must be a finite number > 0, got {w!r}"
    keys = set(arrays.keys())
    if keys != set(global_arrays):
        diff = sorted(keys ^ set(global_arrays))[:3]
        return f"array keys differ from the global model ({', '.join(diff)} ...)"
    sq = 0.0
    for k, ref in global_arrays.items():
        try:
            a = decode_array(arrays[k])
        except Exception as e:  # malformed bytes
            return f"array {k!r} cannot be decoded ({e})"
        if a.dtype != ref.dtype:
            return f"array {k!r} has dtype {a.dtype}, expected {ref.dtype}"
        if a.shape != ref.shape:
            return f"array {k!r} has shape {a.shape}, expected {ref.shape}"
        if not np.all(np.isfinite(a)):
            return f"array {k!r} holds non-finite values"
        if max_update_norm > 0 and np.issubdtype(ref.dtype, np.floating):
            sq += float(np.sum((a.astype(np.float64) - ref) ** 2))
    if max_update_norm > 0 and math.sqrt(sq) > max_update_norm:
        return f"update norm {math.sqrt(sq):.3g} exceeds server.max_update_norm={max_update_norm}"
    return None


def in_global_order(arrays: ArrayRecord, global_keys: Iterable[str]) -> ArrayRecord:
    """The update rebuilt with the global model's keys in the global model's order.

    Flower strategies that work on ``ArrayRecord.to_numpy_ndarrays()`` (FedAvgM's
    momentum, ...) pair layers by position; a client listing its layers in another
    order would be mis-paired. Validation has checked the names; this fixes the order.
    """
    keys = list(global_keys)
    if list(arrays.keys()) == keys:
        return arrays
    return ArrayRecord({k: arrays[k] for k in keys})
