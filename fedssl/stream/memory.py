"""A client's memory across stages, kept by the client runtime, not by the algorithm.

- The replay buffer: raw samples of earlier stages, at most ``stream.buffer`` per client
  under the ``reservoir`` policy (Vitter's algorithm R over every sample the client has
  received, so each one is kept with equal probability), every sample under ``all``
  (retrain-on-everything: unbounded, and reported as such), none under ``none``. When a
  client first trains in a stage, that stage's samples are offered to the buffer; it
  replays only entries of earlier stages (the current ones are in its shard already).
- The previous stage's global model (the teacher of LwF, EWC's anchor, FedMobile-like's
  distillation source): the global model the client receives in its first round of a new
  stage, i.e. the aggregate after the previous stage when the client is sampled in the
  stage's first round (always, with ``federation.fraction_train = 1``).
- Accounting: sample passes (samples in the client's training batches) per stage, and
  the peak of samples / bytes held (stage data + buffer + teacher + algorithm state).

Everything lives in the client's state file (``stream.*`` tensors), so kill -9 and a
resume read back exactly what the client had after the checkpointed round.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from fedssl.seeding import derive_seed

POLICIES = ("none", "reservoir", "all")


@dataclass
class StreamMemory:
    stages: int
    stage: int = -1  # the last stage this client entered
    seen: int = 0  # samples offered to the reservoir so far
    buf_x: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.uint8))
    buf_y: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))  # -1: unlabeled
    buf_stage: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))
    teacher: dict[str, torch.Tensor] = field(default_factory=dict)
    passes: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))  # per stage
    peak: torch.Tensor = field(default_factory=lambda: torch.zeros(2, dtype=torch.int64))  # samples, bytes

    def __post_init__(self) -> None:
        if len(self.passes) != self.stages:
            self.passes = torch.zeros(self.stages, dtype=torch.int64)

    # -- persistence ------------------------------------------------------------------
    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], stages: int) -> StreamMemory:
        t = {k[7:]: v for k, v in tensors.items() if k.startswith("stream.")}
        if "stage" not in t:
            return cls(stages)
        mem = cls(stages, int(t["stage"]), int(t["seen"]), t["buf_x"], t["buf_y"], t["buf_stage"],
                  {k[8:]: v for k, v in t.items() if k.startswith("teacher.")}, t["passes"], t["peak"])
        return mem

    def to_state(self) -> dict[str, torch.Tensor]:
        out = {"stage": torch.tensor(self.stage), "seen": torch.tensor(self.seen), "buf_x": self.buf_x,
               "buf_y": self.buf_y, "buf_stage": self.buf_stage, "passes": self.passes, "peak": self.peak,
               **{f"teacher.{k}": v for k, v in self.teacher.items()}}
        return {f"stream.{k}": v for k, v in out.items()}

    # -- stage entry ---------------------------------------------------------------------
    def enter(self, stage: int, x: torch.Tensor, y: torch.Tensor, policy: str, bound: int,
              global_state: dict[str, torch.Tensor] | None, seed: int, partition_id: int) -> bool:
        """First round of ``stage`` for this client: keep the received global model as the
        previous stage's teacher (``global_state``; None keeps none) and offer the stage's
        samples ``x`` (uint8 NCHW), ``y`` (-1 = unlabeled) to the buffer. False (and no
        change) when the client is already in ``stage``."""
        if stage <= self.stage:
            return False
        self.stage = stage
        self.teacher = ({k: v.detach().clone().cpu() for k, v in global_state.items()}
                        if global_state is not None and stage > 0 else {})
        if policy == "all":
            self._append(x, y, stage)
        elif policy == "reservoir":
            self._reservoir(x, y, stage, bound, np.random.default_rng(derive_seed(seed, "reservoir",
                                                                                  partition_id, stage)))
        elif policy != "none":
            raise ValueError(f"unknown buffer policy {policy!r} (choose from {', '.join(POLICIES)})")
        return True

    def _append(self, x: torch.Tensor, y: torch.Tensor, stage: int) -> None:
        if not len(self.buf_x):
            self.buf_x = x[:0].clone()
        self.buf_x = torch.cat([self.buf_x, x])
        self.buf_y = torch.cat([self.buf_y, y.long()])
        self.buf_stage = torch.cat([self.buf_stage, torch.full((len(y),), stage, dtype=torch.int64)])
        self.seen += len(y)

    def _reservoir(self, x: torch.Tensor, y: torch.Tensor, stage: int, bound: int,
                   rng: np.random.Generator) -> None:
        """Algorithm R: the i-th sample offered (0-based, over the whole run) fills a free
        slot while fewer than ``bound`` are kept, else replaces slot j ~ U{0..i} if j < bound."""
        if bound == 0:
            self.seen += len(y)
            return
        if not len(self.buf_x):
            self.buf_x = x[:0].clone()
        bx, by, bs = list(self.buf_x), self.buf_y.tolist(), self.buf_stage.tolist()
        for k in range(len(y)):
            if len(bx) < bound:
                bx.append(x[k])
                by.append(int(y[k]))
                bs.append(stage)
            else:
                j = int(rng.integers(self.seen + 1))
                if j < bound:
                    bx[j], by[j], bs[j] = x[k], int(y[k]), stage
            self.seen += 1
        self.buf_x = torch.stack(bx) if bx else self.buf_x
        self.buf_y, self.buf_stage = torch.tensor(by, dtype=torch.int64), torch.tensor(bs, dtype=torch.int64)

    # -- use and accounting ----------------------------------------------------------------
    def replay(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_l, y_l, x_u, y_u) of the buffer's entries from earlier stages (y_u hidden: -1)."""
        past = self.buf_stage < self.stage
        lab, unl = past & (self.buf_y >= 0), past & (self.buf_y < 0)
        return self.buf_x[lab], self.buf_y[lab], self.buf_x[unl], self.buf_y[unl]

    def buffer_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.buf_x, self.buf_y, self.buf_stage))

    def teacher_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.teacher.values())

    def account(self, stage_samples: int, stage_bytes: int, other_bytes: int, passes: int) -> dict[str, float]:
        """Add one round's passes; update and return the memory figures the client reports."""
        self.passes[self.stage] += passes
        samples = stage_samples + len(self.buf_y)
        nbytes = stage_bytes + self.buffer_bytes() + self.teacher_bytes() + other_bytes
        self.peak = torch.maximum(self.peak, torch.tensor([samples, nbytes], dtype=torch.int64))
        return {"stream_stage": float(self.stage), "stream_buffer_samples": float(len(self.buf_y)),
                "stream_buffer_bytes": float(self.buffer_bytes()), "stream_memory_samples": float(samples),
                "stream_memory_bytes": float(nbytes), "stream_peak_samples": float(self.peak[0]),
                "stream_peak_bytes": float(self.peak[1]), "stream_stage_passes": float(self.passes[self.stage]),
                "stream_round_passes": float(passes)}
