"""Per-client persistent state (EMA teacher, algorithm statistics) on local disk, keyed by run.

One safetensors file per (partition, run, round trained), in one directory per
client under ``root`` (``<out_dir>/client_state`` in simulation, the SuperNode's own
``state-dir`` in deployment)::

    client_00007/<run id>.r000012.safetensors

A directory per client keeps a client's look-up independent of how many clients the
run has: with every file in one directory, each load and save listed all of them,
O(N) per client and O(N^2) per round.

The run id comes with every message (:data:`RUN_ID_KEY`, set by fedssl's server;
Flower's own run id under a stock server), so a fresh run never reads the state of
another run that used the same directory, and ``--resume`` reads exactly its own.

Files are versioned by round so that a run resumed from a checkpoint at round R reads
exactly the state each client had after round R. Saving a version prunes the others of
that client: on disk stay at most the newest version and the newest one at or below the
last checkpointed round (``keep_round``, 0 when nothing is checkpointed) — two files per
client whatever the server or checkpoint setting. Writes are atomic (temp file + rename);
each file carries its run id, round and a CRC32 of its tensors, so a truncated or corrupt
file is detected: that client starts fresh, with one warning, and the run goes on.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import zlib
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save_file

log = logging.getLogger("fedssl")

#: ConfigRecord key carrying the run id in every TRAIN message (the one place it is named)
RUN_ID_KEY = "fedssl.run-id"

_RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}$")
_DIR = re.compile(r"client_(\d+)$")
_NAME = re.compile(r"([A-Za-z0-9_-]+)\.r(\d+)\.safetensors$")


def check_run_id(run_id: str) -> str:
    """The run id, if it is safe inside a file name; ValueError otherwise."""
    run_id = str(run_id)
    if not _RUN_ID.match(run_id):
        raise ValueError(f"invalid run id {run_id!r} (expected 1-64 of [A-Za-z0-9_-])")
    return run_id


def _crc(tensors: dict[str, torch.Tensor]) -> str:
    crc = 0
    for k in sorted(tensors):
        t = tensors[k].detach().contiguous().cpu()
        crc = zlib.crc32(k.encode(), crc)
        # reshape: a 0-d tensor (a scalar state such as ORCA's margin) cannot be viewed as bytes
        crc = zlib.crc32(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"", crc)
    return f"{crc:08x}"


class ClientStateStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def files(self, partition_id: int | None = None) -> list[tuple[int, str, int, Path]]:
        """(partition id, run id, round, path) of every state file, sorted."""
        dirs = [self._dir(partition_id)] if partition_id is not None else self.root.glob("client_*")
        out = []
        for d in dirs:
            owner = _DIR.match(d.name)
            if owner is None or not d.is_dir():
                continue
            for p in d.glob("*.safetensors"):
                m = _NAME.match(p.name)
                if m:
                    out.append((int(owner.group(1)), m.group(1), int(m.group(2)), p))
        return sorted(out)

    def newest(self, partition_id: int) -> Path:
        """The newest state file of a client, any run (for inspecting a finished run);
        FileNotFoundError when it has none."""
        found = self.files(partition_id)
        if not found:
            raise FileNotFoundError(f"no client state of client {partition_id} under {self.root}")
        return found[-1][-1]

    def _dir(self, partition_id: int) -> Path:
        return self.root / f"client_{partition_id:05d}"

    def _path(self, partition_id: int, run_id: str, server_round: int) -> Path:
        return self._dir(partition_id) / f"{run_id}.r{server_round:06d}.safetensors"

    def load(self, partition_id: int, run_id: str,
             before_round: int | None = None) -> tuple[int, dict[str, torch.Tensor]] | None:
        """(round it was saved after, tensors) of this run's newest version saved before
        ``before_round``; None if the client never trained in this run (lazy creation)
        or its file is unreadable (then it starts fresh, with one warning)."""
        run_id = check_run_id(run_id)
        versions = [(r, p) for _, rid, r, p in self.files(partition_id)
                    if rid == run_id and (before_round is None or r < before_round)]
        if not versions:
            return None
        rnd, path = versions[-1]
        try:
            tensors = load_file(path)
            with safe_open(path, "pt") as f:
                meta = f.metadata() or {}
            want = {"run-id": run_id, "round": str(rnd), "partition-id": str(partition_id)}
            if any(meta.get(k) != v for k, v in want.items()) or meta.get("crc32") != _crc(tensors):
                raise ValueError("its run id, round or checksum does not match")
        except Exception as e:  # truncated, garbled, or another file renamed into place
            log.warning("client %d: state file %s is corrupt (%s); the client starts fresh",
                        partition_id, path.name, str(e).splitlines()[0] if str(e) else type(e).__name__)
            path.unlink(missing_ok=True)  # warned once; the next save replaces it
            return None
        return rnd, tensors

    def save(self, partition_id: int, run_id: str, server_round: int,
             tensors: dict[str, torch.Tensor], keep_round: int = 0) -> None:
        """Write the state after ``server_round``, then delete every other file of this
        client but the newest version at or below ``keep_round`` (the last checkpointed
        round): older versions, versions of other runs, and versions after
        ``server_round`` left by a killed process. An algorithm that keeps no state
        (supervised) writes nothing."""
        run_id = check_run_id(run_id)
        if not tensors:
            return
        self._dir(partition_id).mkdir(parents=True, exist_ok=True)
        plain = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        meta = {"run-id": run_id, "round": str(server_round), "partition-id": str(partition_id),
                "crc32": _crc(plain)}
        target = self._path(partition_id, run_id, server_round)
        fd, tmp = tempfile.mkstemp(dir=self._dir(partition_id), prefix=".state.", suffix=".tmp")
        os.close(fd)
        try:
            save_file(plain, tmp, metadata=meta)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        files = self.files(partition_id)  # one listing of this client's directory
        keep = {target}
        checkpointed = [p for _, rid, r, p in files if rid == run_id and r <= keep_round and r < server_round]
        if checkpointed:
            keep.add(checkpointed[-1])
        for *_, p in files:
            if p not in keep:
                p.unlink(missing_ok=True)

    def retain(self, run_id: str, up_to_round: int | None = None) -> None:
        """Delete every file not of ``run_id`` or, when ``up_to_round`` is given, saved
        after it (the server calls this at start: fresh runs keep nothing of earlier
        runs, resumed ones nothing written after their checkpoint)."""
        run_id = check_run_id(run_id)
        for _, rid, r, p in self.files():
            if rid != run_id or (up_to_round is not None and r > up_to_round):
                p.unlink(missing_ok=True)
        for p in self.root.glob("client_*/.state.*.tmp"):  # left by a process killed mid-write
            p.unlink(missing_ok=True)

    def ids(self) -> list[int]:
        return sorted({pid for pid, *_ in self.files()})
