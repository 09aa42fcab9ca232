"""Split a training set over clients, then into labeled / unlabeled parts.

Plain numpy, deterministic from ``seed`` (``numpy.random.Generator``), vectorised so
1000 clients over 60k samples take milliseconds. Step 1 can also come from a Flower
Datasets partitioner (``flwr:<Class>``, :mod:`fedssl.data.flwr_partition`), imported
only then: flwr-datasets is an optional extra and takes seconds to import.

Two steps:

1. *Ownership*: every train index goes to exactly one client, by ``cfg.partition``:

   - ``iid``: a random equal split (sizes differ by at most one).
   - ``dirichlet``: per class, proportions over clients ~ Dirichlet(``alpha``) (the
     usual label-skew scheme). Clients left with no sample are *repaired*
     deterministically: each empty client (in id order) takes one sample from the
     currently largest client (ties: lowest id). No retry loop, so tiny ``alpha`` with
     many clients always terminates; repaired clients may hold a single sample.
   - ``pathological``: McMahan et al.'s shards: indices sorted by label are cut into
     ``num_clients * classes_per_client`` equal shards, dealt at random, so a client
     sees at most ``classes_per_client`` classes (fewer if two of its shards share a
     class, one more if a shard straddles a class boundary).
   - ``openworld`` (FedoSSL-style): seen classes (``label < S``) are split iid over all
     clients. Of the unseen classes ``[S, K)``, a seeded choice of
     ``globally_unseen`` classes each live on exactly one client (distinct clients
     while there are enough), and every other unseen class is split iid over a
     seeded random subset of ``max(2, ceil(num_clients / 2))`` clients.
   - ``flwr:<Class>``: the Flower partitioner's partitions; samples it leaves out are
     on no client.

2. *Labels*: a client holding ``m`` seen-class samples (``label < S``) gets
   ``max(1, round(labeled_ratio * m))`` labeled ones (round half up), spread over its
   seen classes by largest remainder (each class gets ``floor(ratio * n_c)`` or one
   more; ties go to the larger class, then the lower id), chosen at random within a
   class. Rounding per client rather than per (client, class) keeps the overall
   labeled fraction at ``labeled_ratio`` even when clients hold a few samples per
   class. The rest, and every sample of an unseen class, are unlabeled. A client
   holding only unseen-class samples has no labeled sample (allowed; it trains on
   unlabeled data only); every other client has at least one.

Labels at server (``server_labels_per_class`` = m > 0): before step 1, m samples of
every class are drawn at random (seeded, its own stream) from the train split for the
server; the partitioner then sees only the remaining pool, so no server sample is on
any client. With ``labeled_ratio = 0`` every client sample is unlabeled; above 0
clients also get labels as in step 2 (the mixed case). Not supported with
``openworld`` (the server would hold labels of classes meant to be unseen).

``local_unseen`` / ``global_unseen`` are computed from the actual presence of unseen
classes on clients (>= 2 clients / exactly 1 client), for every scheme.
"""

from __future__ import annotations

import functools
import heapq
import math
from dataclasses import dataclass, field, replace

import numpy as np

from fedssl.config import ConfigError, DataConfig, check_class_counts

__all__ = ["Shard", "Partition", "make_partition", "client_shard"]

_PART_TAG = 0xFED55
_SERVER_TAG = 0x5E4BE4


@dataclass(frozen=True, eq=False)
class Shard:
    labeled: np.ndarray  # int64 sorted indices into the train split
    unlabeled: np.ndarray  # int64 sorted indices into the train split

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Shard):
            return NotImplemented
        return (np.array_equal(self.labeled, other.labeled)
                and np.array_equal(self.unlabeled, other.unlabeled))

    __hash__ = None  # type: ignore[assignment]

    def __len__(self) -> int:
        return len(self.labeled) + len(self.unlabeled)


@dataclass(frozen=True, eq=False)
class Partition:
    shards: tuple[Shard, ...]  # one per client
    num_seen: int  # class ids [0, num_seen) are seen
    local_unseen: tuple[int, ...]  # unseen classes present on >= 2 clients
    global_unseen: tuple[int, ...]  # unseen classes present on exactly 1 client
    server: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))  # server's labeled indices

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Partition):
            return NotImplemented
        return (self.shards == other.shards and self.num_seen == other.num_seen
                and self.local_unseen == other.local_unseen
                and self.global_unseen == other.global_unseen
                and np.array_equal(self.server, other.server))

    __hash__ = None  # type: ignore[assignment]


def make_partition(labels: np.ndarray, cfg: DataConfig, num_classes: int,
                   seed: int) -> Partition:
    """Partition ``labels`` (train split) over ``cfg.num_clients`` clients, after
    setting aside the server's labeled samples when ``server_labels_per_class > 0``."""
    labels = np.asarray(labels).astype(np.int64, copy=False)
    m = getattr(cfg, "server_labels_per_class", 0)
    if m:
        server = server_labeled(labels, m, num_classes, seed, cfg.partition)
        pool = np.setdiff1d(np.arange(len(labels)), server)  # sorted
        part = _client_partition(labels[pool], cfg, num_classes, seed)
        shards = tuple(Shard(_ro(pool[sh.labeled]), _ro(pool[sh.unlabeled])) for sh in part.shards)
        return replace(part, shards=shards, server=_ro(server))
    return _client_partition(labels, cfg, num_classes, seed)


def server_labeled(labels: np.ndarray, per_class: int, num_classes: int, seed: int,
                   partition: str = "") -> np.ndarray:
    """Sorted indices of ``per_class`` random samples of every class (the server's set)."""
    if per_class < 0:
        raise ConfigError(f"data.server_labels_per_class must be >= 0, got {per_class}")
    if partition == "openworld":
        raise ConfigError("data.server_labels_per_class is not supported with "
                          "data.partition=openworld; set it to 0")
    counts = np.bincount(labels, minlength=num_classes)
    smallest = int(counts.min()) if len(counts) else 0
    if per_class > smallest:
        raise ConfigError(
            f"data.server_labels_per_class={per_class} is larger than the smallest class "
            f"(class {int(counts.argmin())} has {smallest} training "
            f"samples)")
    rng = np.random.default_rng([_SERVER_TAG, seed])
    picked = [rng.choice(np.flatnonzero(labels == k), size=per_class, replace=False)
              for k in range(num_classes)]
    return np.sort(np.concatenate(picked)).astype(np.int64)


def _client_partition(labels: np.ndarray, cfg: DataConfig, num_classes: int,
                      seed: int) -> Partition:
    n, c, k = len(labels), cfg.num_clients, num_classes
    s = cfg.seen_classes or k
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if n and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(f"labels must be in [0, {k}), got [{labels.min()}, {labels.max()}]")
    check_class_counts(cfg, k)  # the schema's own check: callers may pass a bare DataConfig
    if c > n:
        raise ConfigError(f"data.num_clients ({c}) exceeds the number of training "
                          f"samples ({n})")
    rng = np.random.default_rng([_PART_TAG, seed])
    scheme = cfg.partition
    if scheme == "iid":
        owner = _iid(np.arange(n), c, rng)
    elif scheme == "dirichlet":
        owner = _dirichlet(labels, c, k, cfg.alpha, rng)
    elif scheme == "pathological":
        owner = _pathological(labels, c, cfg.classes_per_client, rng)
    elif scheme == "openworld":
        owner = _openworld(labels, c, k, s, cfg.globally_unseen, rng)
    elif scheme.startswith("flwr:"):  # a Flower Datasets partitioner (fedssl.data.flwr_partition)
        from fedssl.data.flwr_partition import flwr_owner

        owner = flwr_owner(labels, cfg, seed)
    else:
        raise ConfigError(f"data.partition: unknown partition {scheme!r}")

    # a Flower partitioner may leave samples out (owner -1): they are on no client
    owned = np.flatnonzero(owner >= 0)
    sizes = np.bincount(owner[owned], minlength=c)
    if (sizes == 0).any():
        empty = int(np.flatnonzero(sizes == 0)[0])
        raise ConfigError(
            f"data.partition={scheme}: client {empty} gets no training sample "
            f"({int((sizes == 0).sum())} empty of {c}); lower data.num_clients"
            + (" or data.classes_per_client" if scheme == "pathological" else ""))

    labeled = np.zeros(n, dtype=bool)  # labels at server only: every client sample is unlabeled
    if cfg.labeled_ratio > 0:
        labeled[owned] = _label_mask(labels[owned], owner[owned], c, k, s, cfg.labeled_ratio, rng)
    lab_by_client = _group(owned[labeled[owned]], owner, c)
    unl_by_client = _group(owned[~labeled[owned]], owner, c)
    shards = tuple(Shard(_ro(lab), _ro(unl))
                   for lab, unl in zip(lab_by_client, unl_by_client))

    # presence of unseen classes on clients
    present = np.zeros((c, k), dtype=bool)
    present[owner[owned], labels[owned]] = True
    holders = present.sum(axis=0)
    local = tuple(int(u) for u in range(s, k) if holders[u] >= 2)
    glob = tuple(int(u) for u in range(s, k) if holders[u] == 1)
    return Partition(shards, s, local, glob)


def _ro(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def _group(idx: np.ndarray, owner: np.ndarray, c: int) -> list[np.ndarray]:
    """Split ascending ``idx`` by owner: per-client ascending int64 arrays."""
    own = owner[idx]
    order = np.argsort(own, kind="stable")
    bounds = np.cumsum(np.bincount(own, minlength=c))[:-1]
    return [a.astype(np.int64, copy=True) for a in np.split(idx[order], bounds)]


def _iid(idx: np.ndarray, c: int, rng: np.random.Generator,
         clients: np.ndarray | None = None, owner: np.ndarray | None = None) -> np.ndarray:
    """Deal ``idx`` over ``clients`` (default all ``c``) in a random equal split."""
    if owner is None:
        owner = np.full(int(idx.max(initial=-1)) + 1, -1, dtype=np.int64)
    clients = np.arange(c) if clients is None else np.asarray(clients)
    perm = rng.permutation(idx)
    # a random rotation so the clients getting the extra sample vary with the seed
    slots = (np.arange(len(perm)) + rng.integers(len(clients))) % len(clients)
    owner[perm] = clients[slots]
    return owner


def _dirichlet(labels: np.ndarray, c: int, k: int, alpha: float,
               rng: np.random.Generator) -> np.ndarray:
    owner = np.empty(len(labels), dtype=np.int64)
    for cls in range(k):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        if not len(idx):
            continue
        p = rng.dirichlet(np.full(c, alpha))
        if not np.isfinite(p).all() or p.sum() <= 0:  # underflow guard
            p = np.zeros(c)
            p[rng.integers(c)] = 1.0
        cuts = np.floor(np.cumsum(p)[:-1] * len(idx) + 0.5).astype(np.int64)
        cuts = np.clip(cuts, 0, len(idx))
        counts = np.diff(np.concatenate([[0], cuts, [len(idx)]]))
        owner[idx] = np.repeat(np.arange(c), counts)
    return _repair_empty(owner, c)


def _repair_empty(owner: np.ndarray, c: int) -> np.ndarray:
    """Give each empty client one sample from the currently largest client."""
    sizes = np.bincount(owner, minlength=c)
    empty = np.flatnonzero(sizes == 0)
    if not len(empty):
        return owner
    if len(owner) < c:  # unreachable: checked by the caller
        raise ConfigError(f"data.num_clients ({c}) exceeds the number of training "
                          f"samples ({len(owner)})")
    # per-client index stacks (ascending; we pop the highest index)
    members = _group(np.arange(len(owner)), owner, c)
    stacks = [list(m) for m in members]
    heap = [(-int(sizes[i]), int(i)) for i in np.flatnonzero(sizes > 1)]
    heapq.heapify(heap)
    for e in empty:
        neg, big = heapq.heappop(heap)
        sample = stacks[big].pop()
        owner[sample] = e
        if -neg - 1 > 1:
            heapq.heappush(heap, (neg + 1, big))
    return owner


def _pathological(labels: np.ndarray, c: int, per_client: int,
                  rng: np.random.Generator) -> np.ndarray:
    n = len(labels)
    num_shards = c * per_client
    if num_shards > n:
        raise ConfigError(
            f"data.partition=pathological: {c} clients x {per_client} classes per "
            f"client = {num_shards} shards exceeds the {n} training samples; lower "
            f"data.num_clients or data.classes_per_client")
    # sort by label, random order within a class
    by_label = rng.permutation(n)
    by_label = by_label[np.argsort(labels[by_label], kind="stable")]
    bounds = np.arange(num_shards + 1, dtype=np.int64) * n // num_shards
    shard_of = np.repeat(np.arange(num_shards), np.diff(bounds))  # sizes >= 1
    shard_owner = rng.permutation(num_shards) % c  # each client gets per_client shards
    owner = np.empty(n, dtype=np.int64)
    owner[by_label] = shard_owner[shard_of]
    return owner


def _openworld(labels: np.ndarray, c: int, k: int, s: int, n_global: int,
               rng: np.random.Generator) -> np.ndarray:
    owner = np.full(len(labels), -1, dtype=np.int64)
    seen_idx = np.flatnonzero(labels < s)
    if len(seen_idx):
        _iid(seen_idx, c, rng, owner=owner)
    unseen = np.arange(s, k)
    if not len(unseen):
        return owner
    chosen = rng.permutation(unseen)
    global_cls, local_cls = np.sort(chosen[:n_global]), np.sort(chosen[n_global:])
    if len(local_cls) and c < 2:
        raise ConfigError(
            f"data.partition=openworld: {len(local_cls)} locally-unseen classes need "
            f"data.num_clients >= 2 (got {c}); set data.globally_unseen to "
            f"{k - s} or add clients")
    # globally unseen: one client each, distinct while clients last
    hosts = rng.permutation(c)
    for j, cls in enumerate(global_cls):
        owner[labels == cls] = hosts[j % c]
    spread = min(c, max(2, math.ceil(c / 2)))
    for cls in local_cls:
        idx = np.flatnonzero(labels == cls)
        if not len(idx):
            continue
        if len(idx) < 2:
            raise ConfigError(
                f"data.partition=openworld: unseen class {int(cls)} has {len(idx)} "
                f"training sample, too few to spread over >= 2 clients; raise "
                f"data.max_train_samples or data.globally_unseen")
        m = min(spread, len(idx))
        clients = np.sort(rng.choice(c, size=m, replace=False))
        _iid(idx, c, rng, clients=clients, owner=owner)
    return owner


def _label_mask(labels: np.ndarray, owner: np.ndarray, c: int, k: int, s: int,
                ratio: float, rng: np.random.Generator) -> np.ndarray:
    """Labeled flags: per client, round(ratio x its seen samples) (at least 1),
    spread over its seen classes by largest remainder, random samples in a class."""
    n = len(labels)
    key = rng.random(n)
    order = np.lexsort((key, labels, owner))  # grouped by (client, class), random inside
    group = owner[order] * k + labels[order]
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    counts = np.diff(np.r_[starts, n])
    gid = np.repeat(np.arange(len(starts)), counts)
    rank = np.arange(n) - starts[gid]
    g_label, g_owner = labels[order][starts], owner[order][starts]
    seen = g_label < s
    exact = np.where(seen, ratio * counts, 0.0)
    want = np.floor(exact + 1e-9).astype(np.int64)
    rem = np.maximum(exact - want, 0.0)
    # client target: round half up of ratio x seen samples, at least one
    seen_n = np.bincount(g_owner, weights=np.where(seen, counts, 0), minlength=c)
    target = np.floor(ratio * seen_n + 0.5 + 1e-9).astype(np.int64)
    target = np.where(seen_n > 0, np.maximum(target, 1), 0)
    extra = target - np.bincount(g_owner, weights=want, minlength=c).astype(np.int64)
    # hand out `extra` per client to seen groups by remainder, count, class id
    cand = np.flatnonzero(seen)
    by = cand[np.lexsort((g_label[cand], -counts[cand], -rem[cand], g_owner[cand]))]
    own = g_owner[by]
    first = np.flatnonzero(np.r_[True, own[1:] != own[:-1]])
    pos = np.arange(len(by)) - np.repeat(first, np.diff(np.r_[first, len(by)]))
    want[by[pos < extra[own]]] += 1
    mask = np.zeros(n, dtype=bool)
    mask[order] = rank < want[gid]
    return mask


@functools.lru_cache(maxsize=4)
def _cached_partition(cfg: DataConfig, seed: int):
    from fedssl.data.sources import load_dataset

    data = load_dataset(cfg, seed)
    return data, make_partition(data.train_y, cfg, data.num_classes, seed)


def client_shard(cfg: DataConfig, seed: int, partition_id: int):
    """(dataset, shard of ``partition_id``); loads and partitions once per process."""
    if not 0 <= partition_id < cfg.num_clients:
        raise ConfigError(f"partition_id {partition_id} outside [0, {cfg.num_clients})")
    data, part = _cached_partition(cfg, seed)
    return data, part.shards[partition_id]


def cached_partition(cfg: DataConfig, seed: int) -> Partition:
    """The full :class:`Partition` used by :func:`client_shard` (cached)."""
    return _cached_partition(cfg, seed)[1]
