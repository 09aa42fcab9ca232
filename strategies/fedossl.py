"""FedoSSL's server (Zhang et al., ICML 2023): FedAvg of the weights, plus global
clustering and calibration of the clients' feature centroids.

A plain Flower strategy (``flwr.serverapp.strategy.FedAvg`` subclass): usable from any
ServerApp with ``strategy.start(...)``, and by fedssl's loop inside its wrapper.
``configure_train`` sends the calibrated ``global_centroids`` [K, D] (once there are
any) in a ``payload`` ArrayRecord and asks the clients for theirs
(``config["fedssl.payload"] = True``). ``aggregate_train`` takes the payloads out of
the replies, lets FedAvg average the weights, then :meth:`FedoSSL.absorb_payloads`
stacks the clients' ``local_centroids``, fits K = num_classes global centroids with
Sinkhorn-balanced k-means, and calibrates them with the clients' labeled class means
(weighted by ``class_counts``) so that slot c holds seen class c. Payloads that are
missing keys or malformed are skipped with a warning; a round without any usable
payload keeps the previous centroids.

Global clustering (:meth:`FedoSSL.cluster`):

- ``clustering = "sgd"`` (default, the reference's): the centroids persist across
  rounds and are refined by ``sgd_steps`` SGD steps of the reference's loss
  (:func:`fedssl.global_clustering.refine_centroids`);
  ``init = "kmeans"`` starts them from a balanced k-means of the first round's
  local centroids instead of the reference's random draw (docs/openworld.md);
  ``seen_slots = "class_mean"`` puts each seen class's labeled mean in its slot
  instead of the centroid calibrated to it, and keeps the centroids least like any
  seen class for the other slots (:func:`fedssl.openworld.anchor_seen_slots`);
- ``"kmeans"``: they are re-fitted from scratch each round by Sinkhorn-balanced
  k-means (docs/openworld.md says where it measures better).

The calibrated centroids are the state kept (and checkpointed) for the next round and
go to every client with ``fedossl_stage`` (0: ORCA only, 1: + cluster loss, 2: +
centroid pseudo-labels), the reference's round gates as fractions of the run
(``cluster_start`` = 5/40 and ``pseudo_label_start`` = 7/40: its loss terms start in
the 6th and 8th of 40 rounds). The reference starts from a SimCLR-pretrained backbone;
fedssl's clients replace it by ``client.fedossl.pretrain_rounds`` of labeled warm start.
``server.fedossl_gates = "after_pretrain"`` (the default; ``gate_offset`` here) counts
the fractions over the rounds after the warm start, keeping the reference's ORCA-only
phase; ``"run"`` counts the whole run, where the warm start eats that phase (12 rounds,
3 of warm start: every term starts in round 4, with ORCA's) and seen accuracy crashed
(robustness grid, docs/openworld.md: seen 68.8 vs 74.3 %, 3 collapses vs 1, 30 pairs).
``rampup`` (``server.fedossl_rampup``, default 3; 0 = the reference's switch) > 0 also
sends ``fedossl_ramp``: each centroid term's weight factor, a sigmoid ramp-up
exp(-5 (1 - t)^2) over its first ``rampup`` rounds. With the client's
``pseudo_label_guard = "prototype"`` it is the default mode; both are deviations from
the reference, measured on 13 open-world splits (docs/openworld.md, "The prototype
guard").
``weighting = "uniform"`` averages the clients' weights uniformly, as the reference
does; ``"examples"`` weights by example count.

Deviation from the reference: calibration is greedy over all (seen class, centroid)
pairs, most similar first; the reference takes the seen classes in order, each its
most similar centroid or, if taken, its second (which fails when both are taken).
``seen_slots = "centroid_in_order"`` calibrates as the reference does
(:func:`fedssl.openworld.calibrate_in_order`, with the most similar free centroid
where the reference would fail). On the robustness grid (seeds 0-2) it lost 7.4
points of globally unseen accuracy to the greedy calibration (27.8 vs 35.2 %) and 1.1
of seen accuracy, with 2 collapses against 1 (docs/openworld.md).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedssl.algorithms.fedossl import FedoSSLParams
from fedssl.config.schema import FEDOSSL_INIT, FEDOSSL_SEEN_SLOTS
from fedssl.global_clustering import init_centroids, refine_centroids
from fedssl.openworld import anchor_seen_slots, calibrate, calibrate_in_order, global_clustering
from fedssl.protocol import PAYLOAD, WANT_PAYLOAD_KEY
from fedssl.seeding import derive_seed

log = logging.getLogger("fedssl")

PAYLOAD_KEYS = ("local_centroids", "class_means", "class_counts")


class FedoSSL(FedAvg):
    """FedAvg + FedoSSL's global centroids. ``num_seen`` defaults to ``num_classes``."""

    wants_payload = True

    def __init__(self, num_classes: int = 10, num_seen: int | None = None, seed: int = 0,
                 num_rounds: int = 40, clustering: str = "sgd", sgd_steps: int = 500, init: str = "random",
                 seen_slots: str = "centroid", weighting: str = "uniform", cluster_start: float = 0.125,
                 pseudo_label_start: float = 0.175, gate_offset: int = 0, rampup: int = 3,
                 cluster_temperature: float = 0.1,
                 sinkhorn_epsilon: float = 0.04, sinkhorn: str = "reference",
                 **fedavg_kwargs: Any) -> None:
        super().__init__(**fedavg_kwargs)
        self.num_classes = num_classes
        self.num_seen = num_classes if num_seen is None else num_seen
        self.seed, self.num_rounds = seed, num_rounds
        self.clustering, self.sgd_steps, self.weighting = clustering, sgd_steps, weighting
        if init not in FEDOSSL_INIT:  # the strategy is also built outside fedssl's config
            raise ValueError(f"init must be one of {FEDOSSL_INIT}, got {init!r}")
        if seen_slots not in FEDOSSL_SEEN_SLOTS:
            raise ValueError(f"seen_slots must be one of {FEDOSSL_SEEN_SLOTS}, got {seen_slots!r}")
        self.init, self.seen_slots = init, seen_slots
        self.cluster_start, self.pseudo_label_start = cluster_start, pseudo_label_start
        self.gate_offset = gate_offset  # rounds before the fractions start counting
        self.rampup = rampup
        self.cluster_temperature = cluster_temperature
        self.sinkhorn_epsilon, self.sinkhorn = sinkhorn_epsilon, sinkhorn
        # [K, D] float64, calibrated; with "sgd" also the persistent centroids refined next round
        self.global_centroids: np.ndarray | None = None

    @staticmethod
    def config_kwargs(cfg: Any) -> dict[str, Any]:
        """The constructor arguments a :class:`fedssl.config.Config` sets (also used by
        :func:`fedssl.strategies.mapped_kwargs`, so both ways of building it agree). The client
        keys it shares with the clients come from the algorithm's own section when it
        has them (``client.fedossl.*``), else from FedoSSL's defaults."""
        s, default = cfg.server, FedoSSLParams()

        def client(name: str) -> Any:
            return getattr(cfg.algo_params, name, getattr(default, name))

        return {"num_classes": cfg.num_classes, "num_seen": cfg.num_seen, "seed": cfg.run.seed,
                "num_rounds": cfg.federation.rounds, "clustering": s.fedossl_clustering,
                "sgd_steps": s.fedossl_sgd_steps, "init": s.fedossl_init, "seen_slots": s.fedossl_seen_slots,
                "weighting": s.fedossl_weighting, "cluster_start": s.fedossl_cluster_start,
                "pseudo_label_start": s.fedossl_pseudo_label_start,
                "gate_offset": client("pretrain_rounds") if s.fedossl_gates == "after_pretrain" else 0,
                "rampup": s.fedossl_rampup, "cluster_temperature": client("cluster_temperature"),
                "sinkhorn_epsilon": client("sinkhorn_epsilon"), "sinkhorn": client("sinkhorn")}

    @classmethod
    def from_config(cls, cfg: Any, **fedavg_kwargs: Any) -> FedoSSL:
        """From a :class:`fedssl.config.Config`."""
        return cls(**cls.config_kwargs(cfg), **fedavg_kwargs)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        config[WANT_PAYLOAD_KEY] = True
        messages = list(super().configure_train(server_round, arrays, config, grid))
        payload = self.train_payload(server_round)
        if payload and messages:  # FedAvg's messages share one RecordDict
            messages[0].content[PAYLOAD] = ArrayRecord({k: Array(v) for k, v in payload.items()})
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message],
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        payloads = []
        for msg in replies:
            if msg.has_error() or PAYLOAD not in msg.content:
                continue
            rec = msg.content[PAYLOAD]
            payloads.append((msg.metadata.src_node_id, {k: rec[k].numpy() for k in rec}))
            # FedAvg averages every ArrayRecord of a reply: keep only the weights
            msg.content = RecordDict({k: v for k, v in msg.content.items() if k != PAYLOAD})
        if self.weighting == "uniform":  # the reference: 1 / #clients each
            for msg in replies:
                if not msg.has_error() and "metrics" in msg.content:
                    msg.content["metrics"][self.weighted_by_key] = 1
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is not None:
            self.absorb_payloads(server_round, payloads)
        return arrays, metrics

    def train_payload(self, server_round: int) -> dict[str, np.ndarray]:
        if self.global_centroids is None:
            return {}
        return {"global_centroids": self.global_centroids.astype(np.float32),
                "fedossl_stage": np.array([self.stage(server_round)], dtype=np.int64),
                "fedossl_ramp": self.ramp(server_round)}

    def stage(self, server_round: int) -> int:
        """0: ORCA only; 1: + cluster loss; 2: + pseudo-labels. A term starts in the
        first round that begins with at least its fraction of the run done; the run
        here excludes the first ``gate_offset`` rounds (the clients' warm start)."""
        if server_round >= self._gate_round(self.pseudo_label_start):
            return 2
        return int(server_round >= self._gate_round(self.cluster_start))

    def _gate_round(self, start: float) -> int:
        """The first round whose start has at least ``start`` of the (offset) run done."""
        rounds = max(self.num_rounds - self.gate_offset, 1)
        return self.gate_offset + 1 + int(np.ceil(start * rounds - 1e-9))

    def ramp(self, server_round: int) -> np.ndarray:
        """[cluster, pseudo-label] weight factors in [0, 1]: the sigmoid ramp-up of
        Laine & Aila (exp(-5 (1 - t)^2), t = rounds on / ``rampup``) from each term's
        gate, so the centroid terms do not hit the ORCA-trained model at full weight in
        one round; all ones with ``rampup`` = 0 (the reference)."""
        out = []
        for start in (self.cluster_start, self.pseudo_label_start):
            on = server_round - self._gate_round(start) + 1  # 1 in the gate's own round
            t = 1.0 if self.rampup == 0 else min(max(on, 0) / self.rampup, 1.0)
            out.append(float(np.exp(-5.0 * (1.0 - t) ** 2)) if on > 0 else 0.0)
        return np.asarray(out, dtype=np.float32)

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
        place = {"centroid": calibrate, "centroid_in_order": calibrate_in_order,
                 "class_mean": anchor_seen_slots}[self.seen_slots]
        self.global_centroids = place(centroids, class_means, self.num_seen, valid=counts > 0).astype(np.float64)

    def cluster(self, server_round: int, stack: np.ndarray) -> np.ndarray:
        """This round's uncalibrated global centroids [K, D] from the local ones [M, D]."""
        k = self.num_classes
        if self.clustering == "kmeans":
            return global_clustering(stack, k, seed=derive_seed(self.seed, server_round, "centroids"),
                                     epsilon=self.sinkhorn_epsilon, sinkhorn=self.sinkhorn)
        start = self.global_centroids
        if start is None or start.shape != (k, stack.shape[1]):
            seed = derive_seed(self.seed, 0, "centroids")
            start = (global_clustering(stack, k, seed=seed, epsilon=self.sinkhorn_epsilon, sinkhorn=self.sinkhorn)
                     if self.init == "kmeans" else init_centroids(k, stack.shape[1], seed))
        return refine_centroids(start, stack, steps=self.sgd_steps,
                                temperature=self.cluster_temperature, epsilon=self.sinkhorn_epsilon)

    # checkpointing outside fedssl's loop (fedssl's wrapper saves every data attribute)
    def state_dict(self) -> dict[str, Any]:
        return {"global_centroids": self.global_centroids}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.global_centroids = state.get("global_centroids")

    def _valid_payloads(self, server_round: int, payloads: list[tuple[int, dict[str, np.ndarray]]],
                        ) -> list[tuple[int, dict[str, np.ndarray]]]:
        """The payloads whose arrays have the expected keys, shapes and values; the
        feature dimension is the one most payloads agree on."""
        s = self.num_seen
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
