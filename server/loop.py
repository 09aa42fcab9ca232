"""The server's round loop: sample, send, validate, aggregate, evaluate, checkpoint.

It replaces ``Strategy.start`` so that fedssl can pack virtual clients into
messages, validate each client's update before aggregation, evaluate centrally on
the held-out test split, and checkpoint/resume exactly.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord
from flwr.serverapp import Grid
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from fedssl import runlog
from fedssl.algorithms import ALGORITHMS
from fedssl.config import Config, ConfigError
from fedssl.data import load_dataset, make_partition
from fedssl.data.augment import normalize
from fedssl.metrics import evaluate
from fedssl.models import build_model, state_nbytes
from fedssl.sampling import auto_clients_per_node, pack, sample_clients
from fedssl.server_training import build_server_trainer  # [labels-at-server]
from fedssl.state import ClientStateStore
from fedssl.training import derive_seed, model_kwargs
from strategies import build_strategy
from strategies.base import PIDS_KEY, FedSSLStrategy, iter_updates, to_arrayrecord
from strategies.validation import check_update

log = logging.getLogger("fedssl")


REPLY_POLL_S = 0.005


class ServerRunner:
    def __init__(self, grid: Grid, cfg: Config, resume: bool = False, quiet: bool = False) -> None:
        self.grid, self.cfg, self.resume, self.quiet = grid, cfg, resume, quiet
        self.out = Path(cfg.run.out_dir)
        self.console = Console(stderr=True, quiet=quiet)
        splits = load_dataset(cfg.data, cfg.run.seed)
        self.partition = make_partition(splits.train_y, cfg.data, splits.num_classes, cfg.run.seed)
        self.sizes = [len(s.labeled) + len(s.unlabeled) for s in self.partition.shards]
        self.test_x = normalize(torch.from_numpy(np.ascontiguousarray(splits.test_x.transpose(0, 3, 1, 2))))
        self.test_y = splits.test_y
        torch.manual_seed(derive_seed(cfg.run.seed, "init"))
        self.model = build_model(cfg.model.name, **model_kwargs(cfg, splits))
        self.model_bytes = state_nbytes(self.model)
        # [labels-at-server] the server's own labeled set (None when it holds no labels)
        self.server_trainer = build_server_trainer(cfg, splits.train_x, splits.train_y, self.partition.server)
        self.strategy: FedSSLStrategy = build_strategy(cfg)
        pairs_with = ALGORITHMS[cfg.client.algorithm].pairs_with
        if pairs_with and cfg.server.strategy != pairs_with:
            log.warning("client.algorithm=%s is meant for server.strategy=%s; with %s the clients "
                        "get no server payload and train without it", cfg.client.algorithm,
                        pairs_with, cfg.server.strategy)
        # Deployment (SuperLink + SuperNodes, any grid but the Simulation Engine's
        # InMemoryGrid): every SuperNode holds one partition of its own (node config
        # partition-id + data-dir), so nodes are sampled instead of partition ids, each
        # sampled node gets one message without 'fedssl.pids' and trains its own
        # partition, and the partition id is read back from its reply's metrics.
        self.deployment = not is_simulation_grid(grid)
        if not self.deployment and hasattr(grid, "pull_interval"):
            # InMemoryGrid's documented poll period for replies (default 0.1 s): each
            # round otherwise ends up to 0.1 s after its last reply arrived.
            grid.pull_interval = REPLY_POLL_S
        self._node_pid: dict[int, int] = {}  # deployment: partition id each node last reported
        self._started = False  # deployment: the first round of this process has begun

    # ------------------------------------------------------------------------------
    def evaluate(self, server_round: int, arrays: ArrayRecord) -> dict[str, float]:
        self.model.load_state_dict(arrays.to_torch_state_dict())
        p = self.partition
        return evaluate(self.model, self.test_x, self.test_y, self.cfg.num_classes, p.num_seen,
                        p.local_unseen, p.global_unseen)

    def server_step(self, server_round: int, arrays: ArrayRecord, info: dict[str, Any]) -> ArrayRecord:
        """[labels-at-server] Train the global model on the server's labeled set
        (``fedssl.server_training``); round 0 is the warm-up before round 1."""
        self.model.load_state_dict(arrays.to_torch_state_dict())
        info.update(self.server_trainer.step(self.model, server_round))
        return ArrayRecord(self.model.state_dict())

    def _node_ids(self, min_count: int = 1) -> list[int]:
        """Connected node ids, waiting up to round_timeout for ``min_count`` of them."""
        deadline = time.time() + self.cfg.federation.round_timeout
        while True:
            ids = sorted(self.grid.get_node_ids())
            if len(ids) >= min_count or time.time() > deadline:
                if 0 < len(ids) < min_count:
                    log.warning("only %d of federation.min_clients=%d nodes connected after "
                                "%.0f s; going on with them", len(ids), min_count,
                                self.cfg.federation.round_timeout)
                return ids
            time.sleep(0.5)

    def run(self) -> dict[str, Any]:
        cfg, out = self.cfg, self.out
        out.mkdir(parents=True, exist_ok=True)
        runlog.write_atomic(out / "config.toml", cfg.to_toml())
        arrays = ArrayRecord(self.model.state_dict())
        rows: list[dict[str, Any]] = []
        start_round, wall_offset, best_loss = 1, 0.0, math.inf
        last_ckpt = 0
        if self.resume:
            ckpt = runlog.load_checkpoint(out)
            if ckpt is not None:
                arrays = to_arrayrecord(ckpt["arrays"])
                self.strategy.load_state_dict(ckpt["strategy"])
                rows = [r for r in ckpt["rows"] if r["round"] <= ckpt["round"]]
                start_round, wall_offset = ckpt["round"] + 1, ckpt["wall_s"]
                best_loss, last_ckpt = ckpt["best_loss"], ckpt["round"]
                torch.set_rng_state(ckpt["torch_rng"])
                np.random.set_state(ckpt["numpy_rng"])
                if self.server_trainer is not None:  # [labels-at-server]
                    self.server_trainer.load_state_dict(ckpt.get("server_training", {}))
                self._drop_client_state_after(ckpt["round"])
                log.info("resuming %s after round %d", out, ckpt["round"])
        if self.server_trainer is not None and start_round == 1:  # [labels-at-server] warm-up
            arrays = self.server_step(0, arrays, {})
        if not math.isfinite(best_loss):  # the initial model's loss anchors divergence checks
            best_loss = self.evaluate(0, arrays)["loss"]
        global_np = {k: arrays[k].numpy() for k in arrays}
        status, t_start = "ok", time.time()
        train_s: list[float] = []  # per round: sample, send, train, validate, aggregate (no eval)
        rounds = cfg.federation.rounds
        progress = Progress(TextColumn("[bold]round"), MofNCompleteColumn(), BarColumn(),
                            TextColumn("{task.description}"), TimeElapsedColumn(),
                            TimeRemainingColumn(), console=self.console, transient=False)
        with progress:
            task = progress.add_task("", total=rounds, completed=start_round - 1)
            for rnd in range(start_round, rounds + 1):
                t_round = time.time()
                arrays, info = self._round(rnd, arrays, global_np, last_ckpt)
                if self.server_trainer is not None:  # [labels-at-server] post-aggregation step
                    arrays = self.server_step(rnd, arrays, info)
                train_s.append(time.time() - t_round)
                global_np = {k: arrays[k].numpy() for k in arrays}
                row: dict[str, Any] = {"round": rnd, **info}
                if rnd % cfg.run.eval_every == 0 or rnd == rounds:
                    row.update(self.evaluate(rnd, arrays))
                    row["wall_s"] = wall_offset + time.time() - t_start
                    row["round_s"] = time.time() - t_round
                    rows.append(row)
                    runlog.write_metrics(out, rows)
                    loss = row["loss"]
                    if not math.isfinite(loss) or loss > cfg.server.divergence_factor * max(best_loss, 1e-3):
                        status = "diverged"
                        row["status"] = status
                        runlog.write_metrics(out, rows)
                        log.warning("round %d: global loss %s diverged (best %.4g); stopping "
                                    "cleanly, the last good checkpoint is kept", rnd, loss, best_loss)
                        self.console.print(f"[red]stopped: global model diverged at round {rnd} "
                                           f"(loss {loss}); last good checkpoint: round {last_ckpt}")
                        break
                    best_loss = min(best_loss, loss)
                    progress.update(task, description=f"acc {row['acc_all']:.4f}  loss {loss:.4f}")
                progress.advance(task)
                if cfg.run.checkpoint_every and (rnd % cfg.run.checkpoint_every == 0 or rnd == rounds):
                    runlog.save_checkpoint(out, {
                        "round": rnd, "arrays": global_np, "strategy": self.strategy.state_dict(),
                        "rows": rows, "wall_s": wall_offset + time.time() - t_start,
                        "best_loss": best_loss, "torch_rng": torch.get_rng_state(),
                        "numpy_rng": np.random.get_state(), "client_state": str(self.state_dir),
                        **({"server_training": self.server_trainer.state_dict()}  # [labels-at-server]
                           if self.server_trainer is not None else {}),
                    })
                    last_ckpt = rnd
        final = rows[-1] if rows else {}
        summary = {
            "status": status,
            "final": {k: v for k, v in final.items() if not k.startswith("acc_class_")},
            "per_class_accuracy": {str(k): final.get(f"acc_class_{k}") for k in range(cfg.num_classes)},
            "seen_classes": list(range(self.partition.num_seen)),
            "local_unseen_classes": list(self.partition.local_unseen),
            "global_unseen_classes": list(self.partition.global_unseen),
            "rounds_completed": final.get("round", 0),
            "elapsed_s": wall_offset + time.time() - t_start,
            "round_train_s": train_s,  # this process's rounds, evaluation excluded
            "config": cfg.to_dict(),
        }
        runlog.write_json(out / "summary.json", summary)
        return summary

    @property
    def state_dir(self) -> Path:
        return self.out / "client_state"

    def _drop_client_state_after(self, server_round: int) -> None:
        for p in self.state_dir.glob("client_*.r*.safetensors"):
            if int(p.name.split(".r")[1].split(".")[0]) > server_round:
                p.unlink(missing_ok=True)

    # ------------------------------------------------------------------------------
    def _round(self, rnd: int, arrays: ArrayRecord, global_np: dict[str, np.ndarray],
               keep_round: int) -> tuple[ArrayRecord, dict[str, Any]]:
        cfg, f = self.cfg, self.cfg.federation
        if self.deployment:
            # Wait for min_clients nodes before the first round, so a federation whose
            # nodes are still connecting does not start with a partial first round.
            node_ids = self._node_ids(1 if self._started else f.min_clients)
            self._started = True
            if not node_ids:
                raise ConfigError("no SuperNode connected to the SuperLink")
            node_ids = sample_nodes(node_ids, f.fraction_train, f.min_clients, cfg.run.seed, rnd)
            # groups are only for logging: the partition each node reported before
            groups = [[self._node_pid[n]] if n in self._node_pid else [] for n in node_ids]
            msgs = self.strategy.build_messages(rnd, arrays, groups, node_ids,
                                                {"fedssl.keep-round": keep_round})
            for m in msgs:  # no packed ids: the node trains its own node-config partition-id
                del m.content["config"][PIDS_KEY]
        else:
            pids = sample_clients(cfg.data.num_clients, f.fraction_train, f.min_clients, cfg.run.seed, rnd)
            node_ids = self._node_ids()
            if not node_ids:
                raise ConfigError("no client nodes connected")
            parallelism = max(1, min(len(node_ids), int((_cpus() or 1) / f.num_cpus)))
            cpn = f.clients_per_node or auto_clients_per_node(len(pids), parallelism, self.model_bytes)
            groups = pack(pids, cpn, len(node_ids))
            msgs = self.strategy.build_messages(rnd, arrays, groups, node_ids[:len(groups)],
                                                {"fedssl.keep-round": keep_round})
        group_of = {m.metadata.dst_node_id: g for m, g in zip(msgs, groups)}
        t0 = time.time()
        replies = list(self.grid.send_and_receive(msgs, timeout=f.round_timeout))
        t_send = time.time() - t0
        accepted, payloads, rejected, failed = [], [], 0, 0
        timing: dict[str, float] = {}
        train_metrics: dict[str, list[float]] = {}
        answered = set()
        seen_pids: dict[int, int] = {}  # deployment: partition id -> node that sent it
        # A reply names the node it answers for by the message it replies to: error
        # replies made by the SuperLink itself (e.g. "Node Unavailable" after missed
        # heartbeats) carry the SuperLink's own id as src_node_id.
        dst_of = {m.metadata.message_id: m.metadata.dst_node_id for m in msgs if m.metadata.message_id}
        for reply in replies:
            node = dst_of.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
            answered.add(node)
            group = group_of.get(node, [])
            if reply.has_error():
                failed += max(1, len(group)) if self.deployment else len(group)
                log.warning("round %d: node %d (clients %s) failed: %s", rnd, node, group,
                            reply.error.reason.strip().splitlines()[-1] if reply.error.reason else "")
                continue
            lost = reply.content["metrics"].get("fedssl.failed", []) if "metrics" in reply.content else []
            if lost:
                failed += len(lost)
                log.warning("round %d: node %d: clients %s failed (see the client log)", rnd, node, list(lost))
            try:
                updates = list(iter_updates(reply))
            except Exception as e:  # garbage reply
                rejected += len(group)
                log.warning("round %d: node %d sent a malformed reply: %s", rnd, node, e)
                continue
            for pid, content in updates:
                if pid is None or not 0 <= pid < len(self.sizes):
                    rejected += 1
                    log.warning("round %d: node %d: update without a valid partition-id rejected", rnd, node)
                    continue
                if self.deployment:
                    if pid in seen_pids:  # two SuperNodes configured with one partition-id
                        rejected += 1
                        log.warning("round %d: node %d: partition-id %d already sent by node %d "
                                    "this round; update rejected", rnd, node, pid, seen_pids[pid])
                        continue
                    seen_pids[pid] = node
                    self._node_pid[node] = pid
                reason = check_update(content, global_np, self.sizes[pid], cfg.server.max_update_norm)
                if reason:
                    rejected += 1
                    log.warning("round %d: node %d client %d: update rejected: %s", rnd, node, pid, reason)
                    continue
                accepted.append((pid, content))
                m = content["metrics"]
                for k, v in m.items():
                    if k.startswith("t_"):
                        timing[k] = timing.get(k, 0.0) + float(v)
                    elif k.startswith("train_"):
                        train_metrics.setdefault(k, []).append(float(v))
                if "payload" in content:
                    payloads.append((pid, {k: content["payload"][k].numpy() for k in content["payload"]}))
        for node, group in group_of.items():
            if node not in answered:
                failed += max(1, len(group)) if self.deployment else len(group)
                log.warning("round %d: node %d (clients %s) did not reply within %.0f s; "
                            "dropped from this round", rnd, node, group, f.round_timeout)
        info: dict[str, Any] = {"clients": len(accepted), "rejected_updates": rejected,
                                "failed_clients": failed, "messages": len(msgs), "t_round_trip_s": t_send}
        # sorted: a mean independent of the order replies arrive in (bit-exact resume)
        info.update({k: float(np.mean(sorted(v))) for k, v in train_metrics.items()})
        info.update({k: v / max(1, len(accepted)) for k, v in timing.items()})
        new_arrays = self.strategy.aggregate(rnd, accepted, global_np) if accepted else None
        if new_arrays is None:
            info["status"] = "no_update"
            log.warning("round %d: no acceptable update; the global model is unchanged", rnd)
            return arrays, info
        self.strategy.absorb_payloads(rnd, payloads)
        return new_arrays, info


def is_simulation_grid(grid: Grid) -> bool:
    """True under Flower's Simulation Engine (``run_simulation`` and ``flwr run`` on a
    simulation SuperLink both drive the ServerApp through an ``InMemoryGrid``); False
    under a real SuperLink (``HttpGrid``), where each SuperNode owns one partition."""
    return any(c.__name__ == "InMemoryGrid" for c in type(grid).__mro__)


def sample_nodes(node_ids: list[int], fraction: float, min_clients: int, seed: int,
                 server_round: int) -> list[int]:
    """Deployment sampling: sorted node ids trained in ``server_round``, drawn from
    ``run.seed`` and the round (node ids are assigned by the SuperLink, so the draw is
    reproducible for a given set of connected nodes only)."""
    ids = sorted(int(i) for i in node_ids)
    k = min(len(ids), max(min_clients, int(round(len(ids) * fraction))))
    if k >= len(ids):
        return ids
    rng = np.random.default_rng(derive_seed(seed, "sample-nodes", server_round))
    return sorted(int(ids[i]) for i in rng.choice(len(ids), size=k, replace=False))


def _cpus() -> float:
    import os

    return float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
