"""The wire protocol between fedssl's server and its ClientApp: record and key names.

A TRAIN message carries Flower's usual ``arrays`` (global model) and ``config``
records. fedssl adds:

- ``config[PIDS_KEY]``: the partition ids (virtual clients) one message trains. A
  message without it (any stock Flower server, or deployment) trains the node's own
  ``partition-id`` from its node config;
- ``config[KEEP_ROUND_KEY]``: the round of the server's last checkpoint, so a client
  keeps the state files a resume would need;
- ``config[WANT_PAYLOAD_KEY]``: whether the server reads the algorithm's payload;
- ``config[STAGE_KEY]``: in an incremental run ([stream]), the round's stage;
- a ``PAYLOAD`` ArrayRecord: extra arrays for the algorithm (e.g. FedoSSL's global
  centroids), both ways.

A packed reply holds one ``arrays.<pid>`` / ``metrics.<pid>`` / ``payload.<pid>``
record per trained partition, plus a ``metrics`` record listing them (``PIDS_KEY``)
and those that failed (``FAILED_KEY``). An unpacked reply is a plain Flower reply
whose metrics name its ``PARTITION_KEY``.

Every reply's metrics carry the same keys every round (:data:`TRAIN_METRIC_KEYS` of
the algorithm, missing ones sent as 0 with ``<key>_n = 0``), because Flower's stock
strategies refuse replies whose MetricRecords differ in keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedssl.config import Config, from_flat

PIDS_KEY = "fedssl.pids"
FAILED_KEY = "fedssl.failed"
KEEP_ROUND_KEY = "fedssl.keep-round"
WANT_PAYLOAD_KEY = "fedssl.payload"
PAYLOAD = "payload"
NUM_EXAMPLES = "num-examples"  # Flower's default weighting key
PARTITION_KEY = "partition-id"
CLASS_PRESENT_KEY = "class-present"  # per class: 1 if the client's shard holds it
PRESENT_KEY = "train_present"  # per sorted train_* key: 1 if measured, 0 if filled
PROXIMAL_MU = "proximal-mu"  # Flower's FedProx config key
SERVER_ROUND = "server-round"  # Flower's config key
STAGE_KEY = "fedssl.stage"  # [stream]: the round's stage (0-based); absent: derived from the round


def packed_key(record: str, pid: int) -> str:
    """Record name of partition ``pid``'s ``record`` in a packed reply."""
    return f"{record}.{pid}"


#: The train_* metrics each algorithm's client sends every round (``train_`` + key;
#: a key its loss did not produce this round is sent as 0 and flagged 0 in
#: ``train_present``). An algorithm not listed sends what it produced.
TRAIN_METRIC_KEYS: dict[str, tuple[str, ...]] = {
    "supervised": ("loss", "loss_x"),
    "fixmatch": ("loss", "loss_x", "loss_u", "mask", "pl_acc"),
    "uda": ("loss", "loss_x", "loss_u", "mask", "pl_acc"),
    "meanteacher": ("loss", "loss_x", "loss_u", "rampup"),
    "shrinkmatch": ("loss", "loss_x", "loss_u", "mask", "loss_shrink", "shrink_mask", "certain_ratio",
                    "removed", "pl_acc"),
    "replay": ("loss", "loss_x", "loss_u", "mask", "pl_acc"),
    "retrain": ("loss", "loss_x", "loss_u", "mask", "pl_acc"),
    "lwf": ("loss", "loss_x", "loss_kd"),
    "ewc": ("loss", "loss_x", "loss_ewc"),
    "fedmobile": ("loss", "loss_x", "loss_u", "mask", "loss_kd"),
    "orca": ("loss", "loss_x", "loss_pair", "entropy", "margin"),
    "fedossl": ("loss", "loss_x", "loss_pair", "entropy", "margin", "loss_sup", "loss_cluster",
                "loss_pl", "mask"),
}


def fill_train_metrics(algorithm: str, metrics: dict[str, float]) -> dict[str, float | list[int]]:
    """The same train_* keys every round: ``metrics`` plus the algorithm's declared keys
    it lacks as 0.0, and ``train_present`` (per sorted key: 1 measured, 0 filled)."""
    declared = {f"train_{k}" for k in TRAIN_METRIC_KEYS.get(algorithm, ())}
    out: dict[str, float | list[int]] = {k: float(metrics.get(k, 0.0)) for k in sorted(declared | set(metrics))}
    out[PRESENT_KEY] = [int(k in metrics) for k in sorted(declared | set(metrics))]
    return out


def config_from_run_config(run_config: Mapping[str, Any]) -> Config:
    """Config from Flower's run config (``flwr run --run-config``), known keys only."""
    defaults = Config().to_flat()
    flat = {k: v for k, v in run_config.items() if k in defaults}
    return from_flat({**defaults, **flat}, source="run config")
