"""Step 1 of a partition (which client owns which sample) by a Flower Datasets partitioner.

``data.partition = "flwr:<Class>"`` names any class of ``flwr_datasets.partitioner`` that
splits samples (not columns); ``data.partition_params`` gives its arguments, checked
against its signature. fedssl fills in what it owns: ``num_partitions`` (=
``data.num_clients``), ``partition_by`` (= ``"label"``) and ``seed`` (derived from
``run.seed``). The train labels are wrapped in an in-memory ``datasets.Dataset``
(columns ``label`` and ``idx``), so nothing is fetched from the Hugging Face Hub. fedssl's
own labelled/unlabelled split, server labels and class checks then apply unchanged.

flwr-datasets is an optional extra (``pip install fedssl[flwr-datasets]``) and takes
seconds to import, so it is imported only here, only when asked for.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import io
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from fedssl.config import ConfigError, DataConfig
from fedssl.config.params import accepted_params, parse_params, required_params
from fedssl.config.validate import FLWR_PARTITION
from fedssl.runlog import write_atomic
from fedssl.seeding import derive_seed

# Not nameable from a config: the vertical ones split columns (features), not samples;
# IdToSizeFncPartitioner takes a Python function (Linear, Square and Exponential are its
# named forms).
EXCLUDED = ("VerticalEvenPartitioner", "VerticalSizePartitioner", "IdToSizeFncPartitioner")
# Set by fedssl, not by data.partition_params.
OWNED = {"num_partitions": "data.num_clients", "seed": "run.seed"}


def partitioner_module() -> Any:
    try:
        import datasets  # noqa: F401 - the Dataset the partitioners read
        from flwr_datasets import partitioner
    except ImportError:
        raise ConfigError("data.partition=flwr:...: flwr-datasets is not installed "
                          "(pip install 'fedssl[flwr-datasets]')") from None
    # datasets logs progress bars and cache notices per call; a partition is not news
    logging.getLogger("datasets").setLevel(logging.ERROR)
    return partitioner


def partitioner_names() -> list[str]:
    """The Flower Datasets partitioners that place samples on clients."""
    mod = partitioner_module()
    base = mod.Partitioner
    return sorted(n for n in mod.__all__ if n not in EXCLUDED and n != "Partitioner"
                  and isinstance(getattr(mod, n), type) and issubclass(getattr(mod, n), base))


def build_partitioner(cfg: DataConfig, seed: int) -> Any:
    """The partitioner ``cfg`` names, constructed; ConfigError (one line) on a bad name or argument."""
    name = cfg.partition[len(FLWR_PARTITION):]
    names = partitioner_names()
    if name not in names:
        from fedssl.config import suggest

        raise ConfigError(f"data.partition: flwr-datasets has no sample partitioner {name!r}"
                          f"{suggest(name, names)} (choose from {', '.join(names)})")
    cls = getattr(partitioner_module(), name)
    accepted = accepted_params(cls)
    params = parse_params(cfg.partition_params, "data.partition_params")
    for arg in params:
        if arg in OWNED and arg in accepted:
            raise ConfigError(f"data.partition_params: {arg} is fedssl's to set; set {OWNED[arg]}")
        if arg not in accepted:
            raise ConfigError(f"data.partition_params: {name} has no parameter {arg!r} "
                              f"(it takes {', '.join(sorted(accepted - set(OWNED))) or 'none'})")
    fill = {"num_partitions": cfg.num_clients, "partition_by": "label",
            "seed": derive_seed(seed, "flwr-partition") % 2**32}
    kwargs = {k: v for k, v in fill.items() if k in accepted and k not in params} | _arrays(cls, params)
    missing = sorted(required_params(cls) - set(kwargs))
    if missing:
        raise ConfigError(f"data.partition_params: {name} needs {', '.join(missing)}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"data.partition={cfg.partition}: {_first_line(e)}") from None


def _arrays(cls: type, params: dict[str, Any]) -> dict[str, Any]:
    """TOML lists as numpy arrays where the signature asks for one (e.g. a
    DistributionPartitioner's ``distribution_array``)."""
    sig = inspect.signature(cls).parameters
    return {k: np.asarray(v) if isinstance(v, list) and "ndarray" in str(sig[k].annotation).lower() else v
            for k, v in params.items()}


def flwr_owner(labels: np.ndarray, cfg: DataConfig, seed: int) -> np.ndarray:
    """The client of every sample (-1: in no partition, e.g. beyond a SizePartitioner's sizes).

    Cached on local disk by (labels, partitioner, arguments, clients, seed): the simulation's
    client processes on this machine read the driver's result instead of each importing
    flwr-datasets (seconds) and partitioning again. A client elsewhere computes it itself."""
    key = hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    key.update(repr((cfg.partition, cfg.partition_params, cfg.num_clients, seed)).encode())
    cached = Path(tempfile.gettempdir()) / "fedssl-flwr-partitions" / f"{key.hexdigest()[:32]}.npy"
    try:
        return np.load(cached)
    except (OSError, ValueError):
        pass
    owner = _compute_owner(labels, cfg, seed)
    buf = io.BytesIO()
    np.save(buf, owner)
    try:
        write_atomic(cached, buf.getvalue())
    except OSError:  # a read-only temp dir: every process computes it
        pass
    return owner


def _compute_owner(labels: np.ndarray, cfg: DataConfig, seed: int) -> np.ndarray:
    import datasets

    part = build_partitioner(cfg, seed)
    part.dataset = datasets.Dataset.from_dict({"label": labels, "idx": np.arange(len(labels))})
    try:
        # pyarrow/datasets deprecation notices and progress bars: not the user's concern
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            return _owner(part, cfg, len(labels))
    except ConfigError:
        raise
    except (TypeError, ValueError, KeyError) as e:
        raise ConfigError(f"data.partition={cfg.partition}: {_first_line(e)}") from None


def _owner(part: Any, cfg: DataConfig, n: int) -> np.ndarray:
    count = part.num_partitions
    if count != cfg.num_clients:
        raise ConfigError(f"data.partition={cfg.partition} makes {count} partitions but "
                          f"data.num_clients is {cfg.num_clients}; set it to {count}")
    owner = np.full(n, -1, dtype=np.int64)
    first = np.asarray(part.load_partition(0)["idx"], dtype=np.int64)
    # load_partition builds a Dataset per client (~0.1 s each). Most partitioners keep
    # the indices they select in _partition_id_to_indices: read them there when they
    # agree with the public call for client 0, else ask for every client.
    known = getattr(part, "_partition_id_to_indices", None)
    fast = isinstance(known, dict) and len(known) == count and np.array_equal(np.asarray(known[0]), first)
    for client in range(count):
        idx = (np.asarray(known[client], dtype=np.int64) if fast  # type: ignore[index]
               else first if client == 0 else np.asarray(part.load_partition(client)["idx"], dtype=np.int64))
        if (owner[idx] >= 0).any():
            raise ConfigError(f"data.partition={cfg.partition}: partitions overlap "
                              f"(client {client} shares samples with another)")
        owner[idx] = client
    return owner


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
