"""FedoSSL's server (Zhang et al., ICML 2023): FedAvg of the weights, plus global
clustering and calibration of the clients' feature centroids.

After each round's aggregation, :meth:`FedoSSL.absorb_payloads` stacks the accepted
clients' ``local_centroids`` and updates the K = num_classes global centroids:

- ``server.fedossl_clustering = "sgd"`` (default, the reference's): the centroids
  persist across rounds and are refined by ``server.fedossl_sgd_steps`` SGD steps of
  the reference's loss (:func:`fedssl.global_clustering.refine_centroids`);
- ``"kmeans"``: they are re-fitted from scratch each round by Sinkhorn-balanced
  k-means (the former default; see docs/openworld.md for where it measures better).

Either way they are then calibrated with the clients' labeled class means
(weighted by ``class_counts``) so that slot c holds seen class c; the calibrated
centroids are the state kept (and checkpointed) for the next round and go to every
client with the next round's weights, together with ``fedossl_stage`` (0: ORCA
only, 1: + cluster loss, 2: + centroid pseudo-labels), the reference's round gates
as fractions of the run (``server.fedossl_cluster_start`` = 5/40 and
``server.fedossl_pseudo_label_start`` = 7/40: its loss terms start in the 6th and
8th of 40 rounds). ``server.fedossl_weighting = "uniform"`` averages the clients'
weights uniformly, as the reference does; ``"examples"`` weights by example count.
Payloads that are missing keys or malformed are skipped with a warning; a round
without any usable payload keeps the previous centroids.

Deviation from the reference: calibration is greedy over all (seen class, centroid)
pairs, most similar first; the reference takes the seen classes in order, each its
most similar centroid or, if taken, its second (which fails when both are taken).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import numpy as np
from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg as _FedAvg

from fedssl.config import Config
from fedssl.global_clustering import init_centroids, refine_centroids
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
        # [K, D] float64, calibrated; with "sgd" also the persistent centroids refined next round
        self.global_centroids: np.ndarray | None = None

    def train_payload(self, server_round: int) -> dict[str, np.ndarray]:
        if self.global_centroids is None:
            return {}
        return {"global_centroids": self.global_centroids.astype(np.float32),
                "fedossl_stage": np.array([self.stage(server_round)], dtype=np.int64)}

    def stage(self, server_round: int) -> int:
        """0: ORCA only; 1: + cluster loss; 2: + pseudo-labels. A term starts in the
        first round that begins with at least its fraction of the run done."""
        s, done = self.cfg.server, (server_round - 1) + 1e-9
        rounds = self.cfg.federation.rounds
        return 2 if done >= s.fedossl_pseudo_label_start * rounds else int(done >= s.fedossl_cluster_start * rounds)

    def aggregate(self, server_round: int, updates: list[tuple[int, RecordDict]],
                  global_arrays: dict[str, np.ndarray]) -> Any:
        if self.cfg.server.fedossl_weighting == "uniform":  # the reference: 1 / #clients each
            updates = [(pid, RecordDict({"arrays": c["arrays"], "metrics": MetricRecord({"num-examples": 1})}))
                       for pid, c in updates]
        return super().aggregate(server_round, updates, global_arrays)

    def absorb_payloads(self, server_round: int, payloads: list[tuple[int, dict[str, np.ndarray]]]) -> None:
        valid = self._valid_payloads(server_round, payloads)
        if not valid:
            log.warning("round %d: no usable FedoSSL payload; global centroids %s", server_round,
                        "unchanged" if self.global_centroids is not None else "still absent")
            return
        stack = np.concatenate([p["local_centroids"] for _, p in valid])
        centroids = self.cluster(server_round, stack)
        counts = np.sum([p["class_counts"] for _, p in valid], axis=0)
        sums = np.sum([p["class_means"] * p["class_counts"][:, None] for _, p in valid], axis=0)
        class_means = sums / np.maximum(counts, 1e-12)[:, None]
        self.global_centroids = calibrate(centroids, class_means, self.cfg.num_seen,
                                          valid=counts > 0).astype(np.float64)

    def cluster(self, server_round: int, stack: np.ndarray) -> np.ndarray:
        """This round's uncalibrated global centroids [K, D] from the local ones [M, D]."""
        s, k = self.cfg.server, self.cfg.num_classes
        if s.fedossl_clustering == "kmeans":
            return global_clustering(stack, k, seed=derive_seed(self.cfg.run.seed, server_round, "centroids"),
                                     epsilon=self.cfg.client.sinkhorn_epsilon, sinkhorn=self.cfg.client.sinkhorn)
        start = self.global_centroids
        if start is None or start.shape != (k, stack.shape[1]):
            start = init_centroids(k, stack.shape[1], derive_seed(self.cfg.run.seed, 0, "centroids"))
        return refine_centroids(start, stack, steps=s.fedossl_sgd_steps,
                                temperature=self.cfg.client.cluster_temperature,
                                epsilon=self.cfg.client.sinkhorn_epsilon)

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
