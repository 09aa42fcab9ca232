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

Every reply's metrics carry the same keys every round (the algorithm's declared
``metric_keys``, missing ones sent as 0 and flagged in ``train_present``), because
Flower's stock strategies refuse replies whose MetricRecords differ in keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import tomllib

from fedssl.config import Config, ConfigError, from_flat, keys
from fedssl.config.render import OWN_KEYS, toml_value

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
IDLE_KEY = "fedssl.idle"  # 1: the client ran no step; left out of the average (Algorithm.leave_out_idle)
QUERY_KEY = "fedssl.query"  # what a query message asks for: BN_STATS
BN_STATS = "bn-stats"  # static BN's sums over the client's shard (fedssl.static_bn)
STAGE_KEY = "fedssl.stage"  # [stream]: the round's stage (0-based); absent: derived from the round


def packed_key(record: str, pid: int) -> str:
    """Record name of partition ``pid``'s ``record`` in a packed reply."""
    return f"{record}.{pid}"


def fill_train_metrics(metric_keys: tuple[str, ...], metrics: dict[str, float]) -> dict[str, float | list[int]]:
    """The same train_* keys every round: ``metrics`` plus the algorithm's declared
    ``metric_keys`` (``train_`` + key) it lacks as 0.0, and ``train_present`` (per
    sorted key: 1 measured, 0 filled)."""
    declared = {f"train_{k}" for k in metric_keys}
    out: dict[str, float | list[int]] = {k: float(metrics.get(k, 0.0)) for k in sorted(declared | set(metrics))}
    out[PRESENT_KEY] = [int(k in metrics) for k in sorted(declared | set(metrics))]
    return out


def config_from_run_config(run_config: Mapping[str, Any]) -> Config:
    """Config from Flower's run config (``flwr run --run-config``), declared keys only.

    The run config holds every key of ``[tool.flwr.app.config]``, set or not, so a
    value equal to fedssl's default counts as not set: the chosen algorithm's own
    defaults (``client_defaults``, its section) then apply. Another algorithm's key at
    a value other than its default is the usual error."""
    declared = keys()
    flat = {k: v for k, v in run_config.items() if k in declared and v != declared[k].default}
    return from_flat({**flat, **unpack_own_keys(run_config)}, source="run config")


def pack_own_keys(cfg: Config) -> dict[str, Any]:
    """``cfg`` as flat run-config keys: the app's declared keys as they are, a user
    algorithm's own keys packed into :data:`OWN_KEYS` (Flower's ``--run-config`` takes
    only keys that ``[tool.flwr.app.config]`` declares)."""
    declared, flat = keys(), cfg.to_flat()
    own = {k.rpartition(".")[2]: v for k, v in flat.items() if k not in declared}
    out = {k: v for k, v in flat.items() if k in declared}
    if own:
        out[OWN_KEYS] = "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in own.items()) + " }"
    return out


def unpack_own_keys(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``client.<name>.<key>`` entries that :func:`pack_own_keys` packed."""
    text = str(run_config.get(OWN_KEYS, "") or "")
    if not text:
        return {}
    try:
        own = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        raise ConfigError(f"{OWN_KEYS}: expected an inline table {{key = value, ...}}, got {text!r}") from None
    section = from_flat({k: v for k, v in run_config.items() if k == "client.algorithm"}).algorithm_section
    return {f"{section}.{k}": v for k, v in own.items()}
