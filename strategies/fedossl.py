"""FedoSSL's server (Zhang et al., ICML 2023): FedAvg of the weights, plus global
clustering and calibration of the clients' feature centroids.

After each round's aggregation, :meth:`FedoSSL.absorb_payloads` stacks the accepted
clients' ``local_centroids``, fits K = num_classes global centroids to them with
Sinkhorn-balanced k-means, and calibrates them with the clients' labeled class
means (weighted by ``class_counts``) so that slot c holds seen class c. The
calibrated ``global_centroids`` [K, D] go to every client with the next round's
weights. Payloads that are missing keys or malformed are skipped with a warning; a
round without any usable payload keeps the previous centroids.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import numpy as np
from flwr.serverapp.strategy import FedAvg as _FedAvg

from fedssl.config import Config
from fedssl.openworld import calibrate, global_clustering
from fedssl.training import derive_seed
from strategies import register
from strategies.base import FedSSLStrategy

log = logging.getLogger("fedssl")

PAYLOAD_KEYS = ("local_centroids", "class_means", "class_counts")


@register("fedossl")
class FedoSSL(FedSSLStrategy, _FedAvg):
    wants_payload = True
    state_attrs = ("global_centroids",)

    def __init__(self, cfg: Config, **flower_kwargs: Any) -> None:
        super().__init__(cfg, **flower_kwargs)
        self.global_centroids: np.ndarray | None = None  # [K, D] float32, calibrated

    def train_payload(self, server_round: int) -> dict[str, np.ndarray]:
        if self.global_centroids is None:
            return {}
        return {"global_centroids": self.global_centroids}

    def absorb_payloads(self, server_round: int, payloads: list[tuple[int, dict[str, np.ndarray]]]) -> None:
        valid = self._valid_payloads(server_round, payloads)
        if not valid:
            log.warning("round %d: no usable FedoSSL payload; global centroids %s", server_round,
                        "unchanged" if self.global_centroids is not None else "still absent")
            return
        stack = np.concatenate([p["local_centroids"] for _, p in valid])
        centroids = global_clustering(stack, self.cfg.num_classes,
                                      seed=derive_seed(self.cfg.run.seed, server_round, "centroids"))
        counts = np.sum([p["class_counts"] for _, p in valid], axis=0)
        sums = np.sum([p["class_means"] * p["class_counts"][:, None] for _, p in valid], axis=0)
        class_means = sums / np.maximum(counts, 1e-12)[:, None]
        self.global_centroids = calibrate(centroids, class_means, self.cfg.num_seen, valid=counts > 0)

    def _valid_payloads(self, server_round: int, payloads: list[tuple[int, dict[str, np.ndarray]]],
                        ) -> list[tuple[int, dict[str, np.ndarray]]]:
        """The payloads whose arrays have the expected keys, shapes and values; the
        feature dimension is the one most payloads agree on."""
        s = self.cfg.num_seen
        shaped = []
        for pid, p in sorted(payloads, key=lambda x: x[0]):
            reason = _check_shapes(p, s)
            if reason:
                log.warning("round %d: client %d: FedoSSL payload skipped: %s", server_round, pid, reason)
            else:
                shaped.append((pid, {k: np.asarray(p[k], dtype=np.float64) for k in PAYLOAD_KEYS}))
        if not shaped:
            return []
        dim = Counter(p["local_centroids"].shape[1] for _, p in shaped).most_common(1)[0][0]
        out = []
        for pid, p in shaped:
            if p["local_centroids"].shape[1] != dim or p["class_means"].shape[1] != dim:
                log.warning("round %d: client %d: FedoSSL payload skipped: feature dimension %d, "
                            "expected %d", server_round, pid, p["local_centroids"].shape[1], dim)
            else:
                out.append((pid, p))
        return out


def _check_shapes(p: dict[str, Any], num_seen: int) -> str | None:
    """None if ``p`` is a well-formed FedoSSL payload, else a one-line reason."""
    missing = [k for k in PAYLOAD_KEYS if k not in p]
    if missing:
        return f"missing {', '.join(missing)}"
    try:
        arrays = {k: np.asarray(p[k], dtype=np.float64) for k in PAYLOAD_KEYS}
    except (TypeError, ValueError) as e:
        return f"not numeric ({e})"
    lc, cm, cc = (arrays[k] for k in PAYLOAD_KEYS)
    if lc.ndim != 2 or lc.shape[0] < 1 or lc.shape[1] < 1:
        return f"local_centroids must be [M >= 1, D], got shape {lc.shape}"
    if cm.ndim != 2 or cm.shape[0] != num_seen:
        return f"class_means must be [{num_seen}, D], got shape {cm.shape}"
    if cc.shape != (num_seen,):
        return f"class_counts must be [{num_seen}], got shape {cc.shape}"
    for k, a in arrays.items():
        if not np.all(np.isfinite(a)):
            return f"{k} holds non-finite values"
    if (cc < 0).any():
        return "class_counts holds negative values"
    return None
