"""Per-client data shards for real deployments: ``fedssl data export`` and the loader
a SuperNode's ClientApp uses (node config ``data-dir``).

In a simulation every client process can rebuild any partition from the config. In a
deployment each SuperNode holds only its own data, so the partition is materialised
once, offline, as one file per client and copied to the client's machine.

Shard file format (``.npz``, written with :func:`numpy.savez_compressed`, read with
numpy's default, which refuses object arrays, so a shard cannot carry code)
---------------------------------------------------------------------------------
======  =====================  =====================================================
key     dtype / shape          meaning
======  =====================  =====================================================
x_l     uint8 [n_l, C, H, W]   labeled images, **NCHW** (channels first), raw 0..255
y_l     int64 [n_l]            their labels in [0, num_classes)
x_u     uint8 [n_u, C, H, W]   unlabeled images, NCHW
y_u     int64 [n_u]            the unlabeled images' hidden labels, used only for
                               diagnostic metrics (pseudo-label accuracy); -1 where
                               unknown (truly unlabeled data). Optional: absent
                               means all -1.
meta    0-d str (JSON)         see below
======  =====================  =====================================================

``meta`` keys: ``format`` (``"fedssl-shard/1"``), ``layout`` (``"NCHW"``), ``dataset``,
``num_classes``, ``num_seen``, ``partition-id``, ``num-partitions``, ``seed`` (run.seed),
``config_hash`` (:func:`data_config_hash`: sha256 of the ``[data]`` section minus
``root`` and ``max_test_samples``, plus ``run.seed``, i.e. of everything that decides
the training partition), ``data``
(that ``[data]`` section), ``image_shape`` ([C, H, W]), ``flip`` (horizontal flips
allowed in augmentation), ``num_labeled``, ``num_unlabeled``.

Directory written by ``fedssl data export --out DIR``::

    DIR/manifest.json                     config hash, dataset, one entry per shard
    DIR/partition-<i>/shard.npz           one directory per client, so each can be
                                          mounted/copied on its own machine

A node's ``data-dir`` is either one shard file or a directory that holds exactly one
``*.npz`` shard (e.g. ``DIR/partition-3``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from fedssl.config import Config, ConfigError
from fedssl.console import add_config_flags, add_output_flags, config_from_flags
from fedssl.data.sources import DataError

FORMAT = "fedssl-shard/1"
SHARD_NAME = "shard.npz"
MANIFEST = "manifest.json"

__all__ = [
    "FORMAT",
    "MANIFEST",
    "SHARD_NAME",
    "add_parser",
    "check_node_config",
    "data_config_hash",
    "export_shards",
    "find_shard",
    "load_client_shard",
    "read_shard_meta",
]


#: [data] keys that do not change the training partition (where files live, test subset)
NOT_HASHED = ("root", "max_test_samples")


def data_config_hash(cfg: Config) -> str:
    """Hash of everything that decides the partition (``[data]`` minus ``root`` and
    ``max_test_samples``, plus ``run.seed``): a shard and a run agree on the training
    data iff their hashes are equal."""
    data = cfg.to_dict()["data"]
    for k in NOT_HASHED:
        data.pop(k, None)
    blob = json.dumps({"data": data, "seed": cfg.run.seed}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- export
def _parse_ids(text: str | None, n: int) -> list[int]:
    if not text:
        return list(range(n))
    try:
        ids = sorted({int(x) for x in text.replace(" ", "").split(",") if x})
    except ValueError:
        raise ConfigError(f"--partitions: expected comma-separated ids, got {text!r}") from None
    bad = [i for i in ids if not 0 <= i < n]
    if bad:
        raise ConfigError(f"--partitions: id {bad[0]} outside [0, {n}) (data.num_clients={n})")
    return ids


def export_shards(cfg: Config, out: str | Path, partitions: list[int] | None = None) -> list[Path]:
    """Write one shard per client of ``cfg``'s partition under ``out``; returns the
    shard paths (in partition order)."""
    from fedssl.data import load_dataset, make_partition
    from fedssl.data.tensors import to_nchw  # imports torch: not at the top, which `fedssl --help` loads

    out = Path(out)
    splits = load_dataset(cfg.data, cfg.run.seed)
    part = make_partition(splits.train_y, cfg.data, splits.num_classes, cfg.run.seed)
    n = cfg.data.num_clients
    ids = list(range(n)) if partitions is None else partitions
    chash = data_config_hash(cfg)
    data_section = cfg.to_dict()["data"]
    x = splits.train_x  # uint8 NHWC
    y = splits.train_y.astype(np.int64, copy=False)
    image_shape = [int(x.shape[3]), int(x.shape[1]), int(x.shape[2])]
    out.mkdir(parents=True, exist_ok=True)
    paths, entries = [], []
    for pid in ids:
        shard = part.shards[pid]
        meta = {
            "format": FORMAT, "layout": "NCHW", "dataset": cfg.data.dataset,
            "num_classes": int(splits.num_classes), "num_seen": int(part.num_seen),
            "partition-id": pid, "num-partitions": n, "seed": cfg.run.seed,
            "config_hash": chash, "data": data_section, "image_shape": image_shape,
            "flip": True, "num_labeled": int(len(shard.labeled)),
            "num_unlabeled": int(len(shard.unlabeled)),
        }
        d = out / f"partition-{pid}"
        d.mkdir(parents=True, exist_ok=True)
        path = d / SHARD_NAME
        tmp = d / f".{SHARD_NAME}.tmp.npz"
        np.savez_compressed(
            tmp,
            x_l=to_nchw(x[shard.labeled]),
            y_l=y[shard.labeled],
            x_u=to_nchw(x[shard.unlabeled]),
            y_u=y[shard.unlabeled],
            meta=np.array(json.dumps(meta, sort_keys=True)),
        )
        tmp.replace(path)
        paths.append(path)
        entries.append({"partition-id": pid, "path": f"partition-{pid}/{SHARD_NAME}",
                        "num_labeled": meta["num_labeled"], "num_unlabeled": meta["num_unlabeled"]})
    manifest = {"format": FORMAT, "dataset": cfg.data.dataset, "num-partitions": n,
                "config_hash": chash, "seed": cfg.run.seed, "data": data_section, "shards": entries}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return paths


# ----------------------------------------------------------------------------- load
def find_shard(data_dir: str | Path) -> Path:
    """The shard file named by a node's ``data-dir`` (a file, or a directory holding
    exactly one ``*.npz``)."""
    p = Path(str(data_dir)).expanduser()
    if not str(data_dir).strip():
        raise DataError("node config data-dir is empty")
    if not p.exists():
        raise DataError(f"data-dir {p} does not exist (export shards with `fedssl data export`)")
    if p.is_dir():
        found = sorted(q for q in p.glob("*.npz") if not q.name.startswith("."))
        if len(found) != 1:
            what = "no" if not found else f"{len(found)}"
            hint = (f" (an export directory: use {p}/partition-<i>)"
                    if (p / MANIFEST).exists() else "")
            raise DataError(f"data-dir {p} holds {what} .npz shards{hint}; point data-dir at one "
                            f"client's shard file or at a directory holding exactly one")
        return found[0]
    return p


def _open(path: Path) -> Any:
    try:
        return np.load(path)  # numpy's default refuses object arrays: a shard holds no code
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path}: not a readable .npz shard ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def _meta(path: Path, z: Any) -> dict[str, Any]:
    if "meta" not in z.files:
        raise DataError(f"{path}: not a fedssl shard (no 'meta' entry; export with `fedssl data export`)")
    try:
        meta = json.loads(str(z["meta"][()]))
    except (ValueError, TypeError, KeyError, zipfile.BadZipFile, OSError):
        raise DataError(f"{path}: shard metadata is corrupt") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"{path}: unsupported shard format {meta.get('format') if isinstance(meta, dict) else meta!r} "
                        f"(expected {FORMAT})")
    for key in ("partition-id", "num-partitions", "num_classes", "dataset", "config_hash"):
        if key not in meta:
            raise DataError(f"{path}: shard metadata lacks {key!r}")
    return meta


def read_shard_meta(data_dir: str | Path) -> dict[str, Any]:
    """The metadata of the shard named by ``data_dir`` (cheap: arrays are not read)."""
    path = find_shard(data_dir)
    with _open(path) as z:
        return _meta(path, z)


def check_node_config(node_config: dict[str, Any], cfg: Config | None = None) -> dict[str, Any]:
    """Validate a SuperNode's node config (and, given the run's ``cfg``, that its shard
    belongs to that run). Returns the shard metadata ({} without ``data-dir``).

    Checks: ``partition-id`` / ``num-partitions`` are integers with
    0 <= partition-id < num-partitions; ``data-dir`` names one readable shard whose own
    partition-id / num-partitions equal the node's; with ``cfg``: num-partitions ==
    data.num_clients and the shard's config hash equals the run's. Raises
    :class:`ConfigError` / :class:`DataError` with one line naming the bad value."""
    def _int(key: str) -> int | None:
        if key not in node_config:
            return None
        v = node_config[key]
        if isinstance(v, bool) or not isinstance(v, (int, str)) or not str(v).strip().lstrip("-").isdigit():
            raise ConfigError(f"node config {key}={v!r} is not an integer")
        return int(v)

    pid, n = _int("partition-id"), _int("num-partitions")
    if pid is None:
        raise ConfigError("node config has no partition-id (set --node-config "
                          "\"partition-id=0 num-partitions=N data-dir='...'\")")
    if n is None and cfg is not None:
        n = cfg.data.num_clients
    if n is not None and n < 1:
        raise ConfigError(f"node config num-partitions={n} must be >= 1")
    if n is not None and not 0 <= pid < n:
        raise ConfigError(f"node config partition-id={pid} outside [0, {n}) (num-partitions={n})")
    if cfg is not None and n is not None and n != cfg.data.num_clients:
        raise ConfigError(f"node config num-partitions={n} differs from the run's "
                          f"data.num_clients={cfg.data.num_clients}")
    if cfg is not None and not 0 <= pid < cfg.data.num_clients:
        raise ConfigError(f"node config partition-id={pid} outside [0, {cfg.data.num_clients}) "
                          f"(data.num_clients={cfg.data.num_clients})")
    if "data-dir" not in node_config:
        return {}
    meta = read_shard_meta(node_config["data-dir"])
    where = find_shard(node_config["data-dir"])
    if int(meta["partition-id"]) != pid:
        raise DataError(f"{where} holds partition {meta['partition-id']}, but node config "
                        f"partition-id={pid}")
    if n is not None and int(meta["num-partitions"]) != n:
        raise DataError(f"{where} was exported for {meta['num-partitions']} partitions, but node "
                        f"config num-partitions={n}")
    if cfg is not None and meta["config_hash"] != data_config_hash(cfg):
        diff = [k for k, v in cfg.to_dict()["data"].items()
                if k not in NOT_HASHED and meta.get("data", {}).get(k) != v]
        if meta.get("seed") != cfg.run.seed:
            diff.append("run.seed")
        hint = f" (differs in {', '.join(d if '.' in d else 'data.' + d for d in diff[:3])})" if diff else ""
        raise DataError(f"{where} was exported for a different data config than this run{hint}; "
                        f"re-export with the run's config")
    return meta


def load_client_shard(data_dir: str | Path, node_config: dict[str, Any] | None = None,
                      cfg: Config | None = None):
    """Load the shard named by a node's ``data-dir`` as a
    :class:`fedssl.data.tensors.ClientData` (uint8 NCHW tensors, int64 labels).

    With ``node_config`` (and optionally the run's ``cfg``) the node config is checked
    against the shard first (:func:`check_node_config`). Every problem raises
    :class:`DataError` / :class:`ConfigError` with a one-line message."""
    import torch

    from fedssl.data.tensors import ClientData

    if node_config is not None:
        check_node_config({**node_config, "data-dir": str(data_dir)}, cfg)
    path = find_shard(data_dir)
    with _open(path) as z:
        meta = _meta(path, z)
        missing = [k for k in ("x_l", "y_l", "x_u") if k not in z.files]
        if missing:
            raise DataError(f"{path}: shard lacks array {missing[0]!r}")
        try:
            x_l, y_l, x_u = z["x_l"], z["y_l"], z["x_u"]
            y_u = z["y_u"] if "y_u" in z.files else np.full(len(x_u), -1, dtype=np.int64)
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
            raise DataError(f"{path}: shard is truncated or corrupt ({type(e).__name__})") from None
    k = int(meta["num_classes"])
    for name, x in (("x_l", x_l), ("x_u", x_u)):
        if x.dtype != np.uint8 or x.ndim != 4:
            raise DataError(f"{path}: {name} must be uint8 [N, C, H, W], got {x.dtype} {list(x.shape)}")
        if x.shape[1] not in (1, 3) or (len(x) and x.shape[1] > x.shape[2]):
            raise DataError(f"{path}: {name} has shape {list(x.shape)}; expected NCHW with C in (1, 3)")
    if len(x_l) and len(x_u) and x_l.shape[1:] != x_u.shape[1:]:
        raise DataError(f"{path}: x_l images {list(x_l.shape[1:])} and x_u images "
                        f"{list(x_u.shape[1:])} differ in shape")
    for name, lab, xs in (("y_l", y_l, x_l), ("y_u", y_u, x_u)):
        if lab.ndim != 1 or len(lab) != len(xs) or not np.issubdtype(lab.dtype, np.integer):
            raise DataError(f"{path}: {name} must be {len(xs)} integer labels, got "
                            f"{lab.dtype} {list(lab.shape)}")
    if len(y_l) and (y_l.min() < 0 or y_l.max() >= k):
        raise DataError(f"{path}: y_l labels must be in [0, {k}), got [{y_l.min()}, {y_l.max()}]")
    if len(y_u) and (y_u.min() < -1 or y_u.max() >= k):
        raise DataError(f"{path}: y_u labels must be in [-1, {k}), got [{y_u.min()}, {y_u.max()}]")
    if len(y_l) + len(y_u) == 0:
        raise DataError(f"{path}: shard holds no sample")
    return ClientData(torch.from_numpy(np.ascontiguousarray(x_l)), torch.from_numpy(y_l.astype(np.int64)),
                      torch.from_numpy(np.ascontiguousarray(x_u)), torch.from_numpy(y_u.astype(np.int64)),
                      flip=bool(meta.get("flip", True)))


# ----------------------------------------------------------------------------- CLI
def cmd_export(args: argparse.Namespace) -> int:
    cfg = config_from_flags(args)
    ids = _parse_ids(args.partitions, cfg.data.num_clients)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    if not args.overwrite and ((out / MANIFEST).exists() or any(out.glob(f"partition-*/{SHARD_NAME}"))):
        raise ConfigError(f"--out {out} already holds shards; pass --overwrite to replace them")
    paths = export_shards(cfg, out, ids)
    if not args.quiet:
        total = sum(p.stat().st_size for p in paths)
        print(f"wrote {len(paths)} shard(s) of {cfg.data.dataset} "
              f"({cfg.data.partition}, {cfg.data.num_clients} clients, config hash "
              f"{data_config_hash(cfg)}) to {out}/partition-<i>/{SHARD_NAME} "
              f"({total / 1e6:.1f} MB); manifest: {out / MANIFEST}")
        print(f"node config: --node-config \"partition-id=<i> num-partitions={cfg.data.num_clients} "
              f"data-dir='{out.resolve()}/partition-<i>'\"")
    return 0


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("data", help="data utilities (export per-client shards for deployment, "
                                          "plot a partition)")
    sub = p.add_subparsers(dest="data_command", required=True, parser_class=type(p))
    e = sub.add_parser("export", help="write one .npz shard per client (node config data-dir)",
                       description="Partition the config's dataset exactly as `fedssl run` does "
                                   "and write one shard per client to DIR/partition-<i>/shard.npz "
                                   "(uint8 NCHW images, int64 labels, JSON metadata) plus "
                                   "DIR/manifest.json.")
    e.add_argument("--out", required=True, metavar="DIR", help="output directory")
    add_config_flags(e)
    e.add_argument("--partitions", metavar="IDS", help="only these partition ids, e.g. 0,3 (default: all)")
    add_output_flags(e, "replace the shards and manifest DIR already holds")
    e.set_defaults(func=cmd_export)
    from fedssl.data.plot import add_parser as add_plot

    add_plot(sub)
