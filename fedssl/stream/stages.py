"""Stages of an incremental run: which samples each client gets in each stage.

A client's shard (from the usual partition, so its label skew is the partition's) is
cut into T disjoint stage parts: per class, its labeled samples and its unlabeled
samples are each dealt in a seeded random order into T near-equal parts
(``numpy.array_split``). So every stage brings new samples, the class mix of a client
stays the same from stage to stage, and the labeled fraction stays the partition's.
Stage t's images are shown in stage t's domain (:mod:`fedssl.stream.domains`).

Labels at server: the server's labeled samples are the same in every stage, shown in
the current stage's domain.
"""

from __future__ import annotations

import functools

import numpy as np

from fedssl.config import Config, ConfigError, StreamConfig
from fedssl.data import Shard, cached_partition, load_dataset
from fedssl.stream.domains import corrupt, stage_domains

_STAGE_TAG = 0x57A6E


def stage_of_round(s: StreamConfig, server_round: int) -> int:
    """The stage (0-based) of a 1-based round."""
    return min(s.stages - 1, max(0, (server_round - 1) // s.rounds_per_stage))


def is_stage_end(s: StreamConfig, server_round: int) -> bool:
    return server_round % s.rounds_per_stage == 0


def _split(idx: np.ndarray, labels: np.ndarray, t: int, rng: np.random.Generator) -> list[np.ndarray]:
    parts: list[list[np.ndarray]] = [[] for _ in range(t)]
    for cls in np.unique(labels[idx]):
        mine = rng.permutation(idx[labels[idx] == cls])
        # rotate which stage gets the larger parts, so small classes spread over stages
        off = int(rng.integers(t))
        for k, chunk in enumerate(np.array_split(mine, t)):
            parts[(k + off) % t].append(chunk)
    return [np.sort(np.concatenate(p)).astype(np.int64) if p else np.empty(0, np.int64) for p in parts]


def split_shard(shard: Shard, labels: np.ndarray, stages: int, seed: int, partition_id: int) -> list[Shard]:
    """The T disjoint stage parts of one client's shard."""
    rng = np.random.default_rng([_STAGE_TAG, seed, partition_id])
    lab = _split(np.asarray(shard.labeled), labels, stages, rng)
    unl = _split(np.asarray(shard.unlabeled), labels, stages, rng)
    return [Shard(a, b) for a, b in zip(lab, unl)]


@functools.lru_cache(maxsize=4)
def stage_shards(cfg: Config) -> tuple[tuple[Shard, ...], ...]:
    """[client][stage] shards; ConfigError when a client would get an empty stage."""
    part = cached_partition(cfg.data, cfg.run.seed)
    labels = np.asarray(load_dataset(cfg.data, cfg.run.seed).train_y).astype(np.int64)
    t = cfg.stream.stages
    out = []
    for pid, shard in enumerate(part.shards):
        if len(shard) < t:
            raise ConfigError(
                f"stream.stages={t} needs at least {t} samples per client, but client {pid} holds "
                f"{len(shard)} ({len(labels)} training samples over {cfg.data.num_clients} clients); "
                f"lower stream.stages or data.num_clients, or raise data.max_train_samples")
        out.append(tuple(split_shard(shard, labels, t, cfg.run.seed, pid)))
    return tuple(out)


def check_stages(cfg: Config) -> None:
    """Fail early (ConfigError) when the dataset cannot fill every client's stages."""
    if cfg.stream.stages:
        stage_shards(cfg)


def stage_images(cfg: Config, x: np.ndarray, index: np.ndarray, stage: int, split: int) -> np.ndarray:
    """Images ``x`` (uint8 NHWC, positions ``index`` in split ``split``) in ``stage``'s domain."""
    domain, severity = stage_domains(cfg.stream)[stage]
    return corrupt(x, domain, severity, seed=cfg.run.seed, split=split, index=index)


def client_stage(cfg: Config, partition_id: int, stage: int) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                       np.ndarray, np.ndarray, np.ndarray]:
    """(x_l, y_l, idx_l, x_u, y_u, idx_u) of a client's stage: NHWC uint8 in the stage's
    domain, labels int64, train-split positions."""
    data = load_dataset(cfg.data, cfg.run.seed)
    sh = stage_shards(cfg)[partition_id][stage]
    y = np.asarray(data.train_y).astype(np.int64)
    x_l = stage_images(cfg, data.train_x[sh.labeled], sh.labeled, stage, 0)
    x_u = stage_images(cfg, data.train_x[sh.unlabeled], sh.unlabeled, stage, 0)
    return x_l, y[sh.labeled], sh.labeled, x_u, y[sh.unlabeled], sh.unlabeled


@functools.lru_cache(maxsize=2)
def test_domains(cfg: Config) -> tuple[np.ndarray, ...]:
    """The test split in each stage's domain (uint8 NHWC), stage order."""
    data = load_dataset(cfg.data, cfg.run.seed)
    index = np.arange(len(data.test_y))
    return tuple(stage_images(cfg, data.test_x, index, j, 1) for j in range(cfg.stream.stages))
