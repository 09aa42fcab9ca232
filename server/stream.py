"""The server side of an incremental run ([stream]).

It names each round's stage in the TRAIN config, evaluates the global model on the
test split in every stage's domain (the current domain fills the usual columns), fills
the accuracy matrix R at each stage's last round, and keeps each client's reported
memory peak and sample passes per stage. Its state goes into the checkpoint.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from fedssl import protocol as P
from fedssl.config import Config
from fedssl.data.augment import normalize
from fedssl.data.tensors import nchw_tensor
from fedssl.metrics import evaluate_logits, predict
from fedssl.stream import metrics as M
from fedssl.stream.domains import stage_domains
from fedssl.stream.stages import is_stage_end, stage_images, stage_of_round, test_domains


class StreamTracker:
    def __init__(self, cfg: Config, test_y: np.ndarray) -> None:
        self.cfg, self.s, self.test_y = cfg, cfg.stream, test_y
        self.domains = [f"{d}:{v}" for d, v in stage_domains(cfg.stream)]
        self.test_x = [normalize(nchw_tensor(x)) for x in test_domains(cfg)]
        self.R: list[list[float]] = []  # one row per finished stage
        self.baseline: list[float] = []  # the initial model's accuracy per domain (FWT's b)
        self.clients: dict[str, dict[str, Any]] = {}  # pid -> peaks and passes per stage

    # -- rounds ---------------------------------------------------------------------------
    def stage(self, rnd: int) -> int:
        return stage_of_round(self.s, max(rnd, 1))

    def round_config(self, rnd: int) -> dict[str, int]:
        return {P.STAGE_KEY: self.stage(rnd)}

    def must_evaluate(self, rnd: int) -> bool:
        return is_stage_end(self.s, rnd)

    def server_images(self, x: np.ndarray, idx: np.ndarray, rnd: int) -> torch.Tensor:
        """The server's labeled images (NHWC, train positions ``idx``) in round ``rnd``'s domain."""
        out = stage_images(self.cfg, x, idx, self.stage(rnd), 0)
        return nchw_tensor(out)

    def domain_accuracy(self, model: nn.Module) -> list[float]:
        y = torch.as_tensor(self.test_y, dtype=torch.long)
        return [float((torch.as_tensor(predict(model, x)[0]) == y).float().mean()) for x in self.test_x]

    def evaluate(self, model: nn.Module, rnd: int, local: Any, glob: Any) -> dict[str, float]:
        """The usual metrics on the current stage's domain, plus ``acc_domain_<j>`` for every
        domain; at a stage's last round also the row of R and, at the last, the summary."""
        stage = self.stage(rnd)
        row = evaluate_logits(predict(model, self.test_x[stage])[1], self.test_y, self.cfg.num_classes,
                              self.cfg.num_seen, local_unseen=local, global_unseen=glob)
        accs = self.domain_accuracy(model)
        row.update({"stage": stage, **{f"acc_domain_{j}": a for j, a in enumerate(accs)}})
        if rnd == 0:
            self.baseline = accs
            return row
        if self.must_evaluate(rnd) and len(self.R) == stage:
            self.R.append(accs)
            row["stream_avg_acc"] = float(np.mean(accs[:stage + 1]))
            if len(self.R) == self.s.stages:
                row.update({f"stream_{k}": v for k, v in self.figures().items()})
        return row

    def observe(self, info: dict[str, Any], reports: dict[int, dict[str, float]]) -> None:
        """Fold one round's client reports (``stream_*`` metrics per partition) into the
        per-client peaks and passes; add the round's max / sum columns to ``info``."""
        for pid, rep in sorted(reports.items()):
            c = self.clients.setdefault(str(pid), {"peak_samples": 0, "peak_bytes": 0, "passes": {}})
            c["peak_samples"] = max(c["peak_samples"], int(rep.get("stream_peak_samples", 0)))
            c["peak_bytes"] = max(c["peak_bytes"], int(rep.get("stream_peak_bytes", 0)))
            c["passes"][str(int(rep.get("stream_stage", 0)))] = int(rep.get("stream_stage_passes", 0))
        if reports:
            vals = list(reports.values())
            for k in ("stream_buffer_samples", "stream_buffer_bytes", "stream_memory_samples", "stream_memory_bytes"):
                info[f"{k}_max"] = max(v.get(k, 0.0) for v in vals)
            info["stream_round_passes"] = sum(v.get("stream_round_passes", 0.0) for v in vals)

    # -- results --------------------------------------------------------------------------
    def figures(self) -> dict[str, float]:
        if len(self.R) < self.s.stages:
            return {}
        return M.summarize(self.R, self.baseline or [math.nan] * self.s.stages)

    def summary(self) -> dict[str, Any]:
        t = self.s.stages
        passes = [[c["passes"].get(str(i), 0) for c in self.clients.values()] for i in range(t)]
        return {
            "domains": self.domains, "R": self.R, "baseline": self.baseline, **self.figures(),
            "forgetting_definition": "mean over j < T-1 of max_{l in [j, T-2]} R[l][j] - R[T-1][j] "
                                     "(Chaudhry et al. 2018)",
            "buffer": self.s.buffer,
            "client_peak_samples": {p: c["peak_samples"] for p, c in self.clients.items()},
            "client_peak_bytes": {p: c["peak_bytes"] for p, c in self.clients.items()},
            "max_peak_samples": max((c["peak_samples"] for c in self.clients.values()), default=0),
            "max_peak_bytes": max((c["peak_bytes"] for c in self.clients.values()), default=0),
            "passes_per_stage_mean": [float(np.mean(p)) if p else 0.0 for p in passes],
            "client_passes_per_stage": {p: [c["passes"].get(str(i), 0) for i in range(t)]
                                        for p, c in self.clients.items()},
        }

    def state_dict(self) -> dict[str, Any]:
        return {"R": self.R, "baseline": self.baseline, "clients": self.clients}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.R, self.baseline = [list(r) for r in state["R"]], list(state["baseline"])
        self.clients = state["clients"]
