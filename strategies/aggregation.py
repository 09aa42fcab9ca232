"""Flower's weighted mean of the accepted updates, computed in place.

Flower's ``FedAvg.aggregate_train`` averages with ``aggregate_arrayrecords``: for
every reply and every array it calls ``Array.numpy()`` (an ``np.load`` that parses
the .npy header and copies the data), multiplies by the reply's weight factor and
adds into a running sum. At 200 updates of the CNN that is 1600 ``np.load`` calls,
most of the server's work in a round.

:func:`weighted_mean` does the same arithmetic, in the same order, with the same
dtypes, so its result is bit for bit Flower's, but reads each array as a zero-copy
view of the reply's bytes (:func:`fedssl.strategies.validation.decode`, header parsed once
per layer) and accumulates into one preallocated buffer per layer. The wrapper then
hands the inner strategy a single reply holding that mean: Flower's mean of one
reply is the reply times 1.0, exact, so FedAvgM's momentum, FedOpt's moments and
everything else the inner strategy does after the mean see the same arrays.

Only strategies whose ``aggregate_train`` reads the replies through FedAvg's mean
alone take this path (:data:`WEIGHTED_MEAN`, exact classes: a subclass may read
the replies itself). Robust ones (median, trimmed mean, Krum, Bulyan), q-FedAvg,
FedoSSL (payloads per client) and users' classes keep Flower's path.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvg, FedAvgM, FedProx, FedYogi, Strategy

from fedssl.strategies.validation import decode

#: Exact classes whose aggregation is Flower's weighted mean followed by a step on the
#: mean only (FedAvgM's momentum, FedOpt's adaptive moments).
WEIGHTED_MEAN: frozenset[type] = frozenset({FedAvg, FedProx, FedAvgM, FedAdam, FedYogi, FedAdagrad})


def takes_mean(inner: Strategy) -> bool:
    """True if ``inner``'s aggregation may be fed the precomputed weighted mean."""
    return type(inner) in WEIGHTED_MEAN


def weighted_mean(updates: Sequence[tuple[ArrayRecord, int | float]], keys: Sequence[str]
                  ) -> dict[str, np.ndarray]:
    """Flower's ``aggregate_arrayrecords`` over (arrays, weight) pairs, in their order.

    Same operations as Flower (``x * (w / total)`` added into a running sum; the first
    product starts it), so the same rounding: float32 layers sum in float32, integer
    buffers (BatchNorm's ``num_batches_tracked``) in float64."""
    weights = [w for _, w in updates]
    total = sum(weights)
    factors = [w / total for w in weights]
    acc: dict[str, np.ndarray] = {}
    tmp: dict[str, np.ndarray] = {}
    for (arrays, _), f in zip(updates, factors):
        for k in keys:
            x = decode(arrays[k])  # read-only view of the reply's bytes
            if k not in acc:
                acc[k] = x * f
                tmp[k] = np.empty_like(acc[k])
            else:
                np.multiply(x, f, out=tmp[k])
                acc[k] += tmp[k]
    return acc


def mean_reply(mean: dict[str, np.ndarray], weight_key: str, total: int | float) -> RecordDict:
    """The content of the one reply the inner strategy gets: the mean, weight ``total``."""
    return RecordDict({"arrays": ArrayRecord({k: Array(np.asarray(v)) for k, v in mean.items()}),
                       "metrics": MetricRecord({weight_key: total})})
