"""The shared local trainer: one client's round, whatever its algorithm.

It owns what every algorithm shares: seeded sampling of labeled/unlabeled batches,
weak/strong views, the SGD optimiser, FedProx's proximal term, and the per-client
EMA teacher with its rule for meeting the new global model:

    gap      = server_round - round the teacher was last updated (>= 1)
    teacher <- s^gap * teacher + (1 - s^gap) * global        (s = client.teacher_sync)
    after each step: teacher <- m * teacher + (1 - m) * student   (m = client.ema_decay)

so a teacher that missed several rounds leans more on the fresh global model;
s = 0 re-initialises it from the global model each round, s = 1 never looks at it.
Batch-norm buffers are copied from the student, not averaged.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from fedssl.algorithms import Algorithm, Batch, RoundContext
from fedssl.config import ClientConfig, Config
from fedssl.data.augment import VIEWS, normalize
from fedssl.data.tensors import ClientData
from fedssl.optim import SGD
from fedssl.seeding import derive_seed


@dataclass
class TrainResult:
    state: dict[str, torch.Tensor]
    metrics: dict[str, float]
    payload: dict[str, np.ndarray] = field(default_factory=dict)
    num_examples: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    sample_passes: int = 0  # samples in this round's training batches (each counted once per step)
    stream: dict[str, float] = field(default_factory=dict)  # [stream]: the client's memory figures
    idle: bool = False  # no step ran: the client had nothing to learn from this round


class _Sampler:
    """Endless epochs of seeded permutations over n items."""

    def __init__(self, n: int, gen: torch.Generator) -> None:
        self.n, self.gen = n, gen
        self.perm, self.pos = torch.empty(0, dtype=torch.long), 0

    def take(self, k: int) -> torch.Tensor:
        if self.n == 0:
            return torch.empty(0, dtype=torch.long)
        out = []
        while k > 0:
            if self.pos >= len(self.perm):
                self.perm, self.pos = torch.randperm(self.n, generator=self.gen), 0
            chunk = self.perm[self.pos:self.pos + k]
            self.pos += len(chunk)
            k -= len(chunk)
            out.append(chunk)
        return torch.cat(out)


class _Batches:
    """One round's batches: labeled draws, and unlabeled draws from the algorithm's
    pool (positions in the shard; None: the whole shard), as augmented views."""

    def __init__(self, data: ClientData, algorithm: Algorithm, c: ClientConfig, gen: torch.Generator,
                 device: torch.device, pool: torch.Tensor | None) -> None:
        self.algorithm, self.flip, self.device, self.pool = algorithm, data.flip, device, pool
        self.n_l, self.n_u = c.batch_size, c.batch_size * c.uratio
        self.n_pool = len(data.y_u) if pool is None else len(pool)
        self.lab, self.unl = _Sampler(len(data.y_l), gen), _Sampler(self.n_pool, gen)
        # the shard goes to the device once per round as uint8, batches are augmented there; index draws stay on the CPU
        self.x_l, self.y_l, self.x_u, self.y_u = (t.to(device, non_blocking=True)
                                                  for t in (data.x_l, data.y_l, data.x_u, data.y_u))
        self.use_unlabeled = algorithm.uses_unlabeled and self.n_pool > 0

    def next(self) -> Batch:
        il = self.lab.take(self.n_l).to(self.device, non_blocking=True)
        batch = Batch(x_l=_views(self.x_l[il], self.algorithm.labeled_views, self.flip), y_l=self.y_l[il], x_u=[])
        if self.use_unlabeled:
            iu_cpu = self.unl.take(self.n_u)
            iu_cpu = iu_cpu if self.pool is None else self.pool[iu_cpu]
            iu = iu_cpu.to(self.device, non_blocking=True)
            batch.x_u, batch.y_u = _views(self.x_u[iu], self.algorithm.unlabeled_views, self.flip), self.y_u[iu]
            batch.idx_u = iu_cpu  # positions in the shard (SemiFL's per-round pseudo-labels)
        return batch


def build_algorithm(cfg: Config) -> Algorithm:
    """The algorithm ``cfg`` names, with its own parameters and the run's rounds."""
    algo: Algorithm = cfg.algorithm_class(cfg.client, cfg.num_classes, cfg.num_seen, params=cfg.algo_params,
                                          rounds=cfg.federation.rounds)
    return algo


def num_local_steps(cfg: Config, data: ClientData, algorithm: Algorithm, n_unlabeled: int | None = None) -> int:
    """``client.local_steps`` when > 0, else ``local_epochs`` passes over the data the
    algorithm learns from: its ``n_unlabeled`` unlabeled samples (default: the whole
    shard; :meth:`Algorithm.unlabeled_pool` may choose fewer) in batches of batch_size *
    uratio for SSL algorithms, as in FixMatch's notion of an epoch, the labeled set
    otherwise; :meth:`Algorithm.epoch_steps` may change that count."""
    c = cfg.client
    if c.local_steps > 0:
        return c.local_steps
    n_u = len(data.y_u) if n_unlabeled is None else n_unlabeled
    if algorithm.uses_unlabeled and n_u:
        per_epoch = math.ceil(n_u / (c.batch_size * c.uratio))
    else:
        per_epoch = math.ceil(max(len(data.y_l), 1) / c.batch_size)
    return max(1, algorithm.epoch_steps(c.local_epochs * per_epoch))


def seed_torch(seed: int) -> None:
    """``torch.manual_seed`` without its cost on a CPU-only process: there it also queues
    a lazy CUDA seeding with a formatted stack trace, once per call (about 1 ms per
    client round, and a queue that grows for the life of the worker). The CPU stream
    is seeded the same; CUDA is seeded when it is in use."""
    torch.random.default_generator.manual_seed(seed)
    if torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(seed)


def _views(x: torch.Tensor, names: tuple[str, ...], flip: bool) -> list[torch.Tensor]:
    """Augmented views of a uint8 batch, normalised once each, on ``x``'s device."""
    return [normalize(VIEWS[v](x, flip)) for v in names]


@torch.no_grad()
def _sync_teacher(teacher: nn.Module, global_state: dict[str, torch.Tensor], s: float) -> None:
    for k, t in teacher.state_dict().items():
        g = global_state[k].to(t.device)
        if t.is_floating_point() and "running_" not in k:
            t.mul_(s).add_(g, alpha=1 - s)
        else:
            t.copy_(g)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """teacher <- decay * teacher + (1 - decay) * student; buffers copied."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(decay).add_(s.detach(), alpha=1 - decay)
    for t, s in zip(teacher.buffers(), student.buffers()):
        t.copy_(s)


def scheduled_lr(lr: float, cfg: Config, server_round: int) -> float:
    """``lr`` in ``server_round`` under ``client.lr_schedule``: constant, or cosine-decayed
    over the run's R rounds, lr * (1 + cos(pi * (r - 1) / R)) / 2 (half-cosine as in
    SGDR/FixMatch); round 0 (the server's warm-up) gets round 1's."""
    if cfg.client.lr_schedule == "constant":
        return lr
    r = max(server_round, 1)
    return lr * 0.5 * (1.0 + math.cos(math.pi * (r - 1) / max(1, cfg.federation.rounds)))


def round_lr(cfg: Config, server_round: int) -> float:
    """The clients' learning rate in ``server_round`` (``client.lr``, scheduled)."""
    return scheduled_lr(cfg.client.lr, cfg, server_round)


def train_client(
    model: nn.Module,
    algorithm: Algorithm,
    data: ClientData,
    cfg: Config,
    *,
    server_round: int,
    partition_id: int,
    state: tuple[int, dict[str, torch.Tensor]] | None,
    payload: dict[str, np.ndarray] | None = None,
    proximal_mu: float = 0.0,
    device: torch.device | None = None,
    stage: int = 0, prev_model: nn.Module | None = None,  # [stream]: ctx.stage, ctx.prev_model
) -> TrainResult:
    """Train ``model`` (holding the global weights) for one round in place. ``state``: what
    :class:`fedssl.state.ClientStateStore` returned (None the first time). Returns the new
    state to persist, the metrics, the payload and the example count (FedAvg weight)."""
    t0 = time.perf_counter()
    device = device or torch.device("cpu")
    c = cfg.client
    seed = derive_seed(cfg.run.seed, server_round, partition_id)
    seed_torch(seed)  # augmentation, dropout
    gen = torch.Generator().manual_seed(seed)
    ctx = _round_context(model, algorithm, state, payload, device, c.teacher_sync, server_round)
    ctx.stage, ctx.prev_model = stage, prev_model
    model.train()
    algorithm.begin_round(model, ctx, data)
    batches = _Batches(data, algorithm, c, gen, device, algorithm.unlabeled_pool())
    ctx.total_steps = steps = num_local_steps(cfg, data, algorithm, batches.n_pool)
    opt = SGD(model.parameters(), lr=round_lr(cfg, server_round), momentum=c.momentum,
              weight_decay=c.weight_decay, nesterov=c.momentum > 0)
    prox_ref = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else None
    sums: dict[str, torch.Tensor | float] = {}  # read once after the loop: no per-step sync
    counts: dict[str, int] = {}
    t_data = t_train = 0.0
    for step in range(steps):
        ctx.step = step
        t1 = time.perf_counter()
        batch = batches.next()
        t2 = time.perf_counter()
        if batch.y_l.numel() == 0 and not batch.x_u:
            break  # nothing to learn from on this client
        _accumulate(sums, counts, _sgd_step(model, algorithm, batch, ctx, opt, prox_ref, proximal_mu,
                                            c.ema_decay, c.max_grad_norm))
        t_data += t2 - t1
        t_train += time.perf_counter() - t2
    out_payload = algorithm.end_round(model, ctx, data)
    metrics = {f"train_{k}": float(v) / counts[k] for k, v in sums.items()}
    timings = {"data_s": t_data, "train_s": t_train, "total_s": time.perf_counter() - t0}
    # samples in the round's batches: the samplers never run dry, so each step draws full batches
    passes = counts.get("loss", 0) * ((c.batch_size if len(data.y_l) else 0) + batches.n_u * batches.use_unlabeled)
    return TrainResult(_new_state(ctx, keep_teacher=c.teacher_sync > 0), metrics, out_payload,
                       _weight(algorithm, data), timings, passes, idle="loss" not in counts)


def _new_state(ctx: RoundContext, keep_teacher: bool = True) -> dict[str, torch.Tensor]:
    """What the client persists: the algorithm's state and its EMA teacher. With
    ``teacher_sync = 0`` the next round's teacher is the received model whatever was
    saved, so the teacher is not stored (FedSTO's default: about 45 MB less per
    100-client run)."""
    new_state = {f"algo.{k}": v for k, v in ctx.state.items()}
    if ctx.teacher is not None and keep_teacher:
        new_state.update({f"teacher.{k}": v for k, v in ctx.teacher.state_dict().items()})
    return new_state


def _weight(algorithm: Algorithm, data: ClientData) -> int:
    """The client's aggregation weight (num-examples), at least 1."""
    if algorithm.equal_weight:  # e.g. SemiFL: every active client counts the same
        return 1
    return max(1, len(data.y_l) + (len(data.y_u) if algorithm.uses_unlabeled else 0))


def _sgd_step(model: nn.Module, algorithm: Algorithm, batch: Batch, ctx: RoundContext,
              opt: SGD, prox_ref: list[torch.Tensor] | None, proximal_mu: float,
              ema_decay: float, max_grad_norm: float = 0.0) -> dict:
    """One local step: the algorithm's loss (+ FedProx's proximal term), the gradient
    clipped at ``max_grad_norm`` (when > 0), SGD, then the EMA teacher. Returns the
    step's metrics, the total loss included."""
    loss, metrics = algorithm.loss(model, batch, ctx)
    if prox_ref is not None:
        loss = loss + proximal_mu / 2 * sum((p - r).pow(2).sum() for p, r in zip(model.parameters(), prox_ref))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    opt.step()
    if ctx.teacher is not None:
        ema_update(ctx.teacher, model, ema_decay)
    metrics["loss"] = loss.detach()
    return metrics


def _round_context(model: nn.Module, algorithm: Algorithm, state: tuple[int, dict[str, torch.Tensor]] | None,
                   payload: dict[str, np.ndarray] | None, device: torch.device, teacher_sync: float,
                   server_round: int) -> RoundContext:
    """The round's context: the server payload, the algorithm's saved state and, for
    teacher-based algorithms, the EMA teacher met with the global model."""
    saved = state[1] if state else {}
    ctx = RoundContext(server_round=server_round, payload=payload or {}, device=device,
                       state={k[5:]: v for k, v in saved.items() if k.startswith("algo.")})
    if algorithm.uses_teacher:
        global_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        ctx.teacher = _round_teacher(model, state, global_state, teacher_sync, server_round)
    return ctx


def _round_teacher(model: nn.Module, state: tuple[int, dict[str, torch.Tensor]] | None,
                   global_state: dict[str, torch.Tensor], teacher_sync: float,
                   server_round: int) -> nn.Module:
    """The client's EMA teacher for this round: its saved teacher moved toward the
    global model by ``teacher_sync ** gap`` (gap = rounds since it last trained), or
    the global model itself the first time. Frozen."""
    teacher = copy.deepcopy(model).eval()
    saved = state[1] if state else {}
    teacher_state = {k[8:]: v for k, v in saved.items() if k.startswith("teacher.")}
    if state and teacher_state:
        teacher.load_state_dict(teacher_state)
        _sync_teacher(teacher, global_state, teacher_sync ** max(1, server_round - state[0]))
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def _accumulate(sums: dict[str, torch.Tensor | float], counts: dict[str, int], metrics: dict) -> None:
    """Add one step's metrics (tensors stay on the device: no per-step sync); count the
    steps that emitted each one (pl_acc only when the mask is non-empty)."""
    for k, v in metrics.items():
        sums[k] = sums.get(k, 0.0) + (v.detach().double() if isinstance(v, torch.Tensor) else float(v))
        counts[k] = counts.get(k, 0) + 1
