"""Per-client persistent state (EMA teacher, algorithm statistics) on local disk.

One safetensors file per (partition, round trained) under ``root``, keyed by run
through the root itself (``<out_dir>/client_state`` in simulation, the SuperNode's
own ``state-dir`` in deployment). Only the clients being trained are loaded, so
memory does not grow with the number of clients; a never-sampled client has no file
until it trains (created lazily).

Files are versioned by round so that a run resumed from a checkpoint at round R
reads exactly the state each client had after round R, even if the killed process
had already written later versions. Writes are atomic (temp file + rename).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

_NAME = re.compile(r"client_(\d+)\.r(\d+)\.safetensors$")


class ClientStateStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _versions(self, partition_id: int) -> list[tuple[int, Path]]:
        out = []
        for p in self.root.glob(f"client_{partition_id:05d}.r*.safetensors"):
            m = _NAME.search(p.name)
            if m:
                out.append((int(m.group(2)), p))
        return sorted(out)

    def load(self, partition_id: int, before_round: int | None = None) -> tuple[int, dict[str, torch.Tensor]] | None:
        """(round it was saved after, tensors) of the newest version saved before
        ``before_round``; None if the client never trained (lazy creation)."""
        versions = [v for v in self._versions(partition_id)
                    if before_round is None or v[0] < before_round]
        if not versions:
            return None
        rnd, path = versions[-1]
        return rnd, load_file(path)

    def save(self, partition_id: int, server_round: int, tensors: dict[str, torch.Tensor],
             keep_round: int = 0) -> None:
        """Write the state after ``server_round``. Versions at or below ``keep_round``
        (the last checkpointed round) are pruned to the newest one. An algorithm that
        keeps no state (supervised) writes nothing."""
        if not tensors:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, suffix=".tmp")
        os.close(fd)
        try:
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp)
            os.replace(tmp, self.root / f"client_{partition_id:05d}.r{server_round:06d}.safetensors")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        old = [p for r, p in self._versions(partition_id) if r <= keep_round]
        for p in old[:-1]:
            p.unlink(missing_ok=True)

    def ids(self) -> list[int]:
        return sorted({int(m.group(1)) for p in self.root.glob("client_*.safetensors")
                       if (m := _NAME.search(p.name))})
