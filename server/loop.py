"""The server's round loop: what Flower's ``Strategy.start`` lacks.

Each round drives the strategy only through Flower's four verbs
(``configure_train`` -> ``grid.send_and_receive`` -> ``aggregate_train``, then
``configure_evaluate`` / ``aggregate_evaluate``); sampling, packing, validation and
payloads live in :class:`fedssl.strategies.wrapper.FedSSLStrategy`. The loop adds exact
checkpoint/resume, the divergence stop, central evaluation on the test split, an
optional server step after aggregation, metrics.csv / summary.json, and progress.

The server holds no client data: it loads the test split only. Partition sizes and
the classes each shard holds come from the clients' replies (see the wrapper).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from fedssl import protocol as P
from fedssl import runlog
from fedssl.versions import provenance
from fedssl.config import Config, ConfigError
from fedssl.data import load_dataset
from fedssl.data.partition import server_labeled
from fedssl.data.augment import normalize
from fedssl.metrics import confusion_matrix, evaluate_logits, predict
from fedssl.data.tensors import nchw_tensor
from fedssl.models import run_model, state_nbytes
from fedssl.seeding import derive_seed
from fedssl.server.bn_query import federated_bn_stats
from fedssl.static_bn import bn_layers
from fedssl.server_training import ServerTrainer, build_server_trainer
from fedssl.state import RUN_ID_KEY, ClientStateStore
from fedssl.timing import stamp
from fedssl.tracking import Trackers
from fedssl.strategies import build_strategy
from fedssl.flower_compat import poll_replies_every
from fedssl.strategies.wrapper import FedSSLStrategy

log = logging.getLogger("fedssl")

REPLY_POLL_S = 0.005
COLLAPSE_SHARE = 0.95  # a trained 10-class model never gives one answer this often
VARIED_SHARE = 0.5  # ...and has once given varied answers (an untrained one often does not)

class ServerSetup:
    """What the server builds before round 1: the test split, the initial global model,
    the strategy, and (when configured) the trainer on the server's own labels and the
    incremental run's tracker. ``fedssl run`` builds it once, before the simulation
    starts (the model's size places the clients on nodes, and a bad strategy setting
    fails before Ray starts), and hands it to the ServerApp; under ``flwr run`` the
    ServerApp builds it."""

    def __init__(self, cfg: Config) -> None:
        test_x, self.test_y = load_test_split(cfg)
        self.test_x = normalize(nchw_tensor(test_x))
        torch.manual_seed(derive_seed(cfg.run.seed, "init"))
        self.model = run_model(cfg, in_channels=test_x.shape[-1], image_size=test_x.shape[1])
        if cfg.server.bn_stats == "server_clients" and not bn_layers(self.model):
            raise ConfigError(f"server.bn_stats=server_clients needs a model with batch norm; "
                              f"model.name={cfg.model.name} has none (try cnn_bn)")
        self.strategy: FedSSLStrategy = build_strategy(cfg, model_bytes=state_nbytes(self.model))
        # labels at server: the server's own labeled set (None when it holds no labels)
        self.server_trainer = load_server_trainer(cfg)
        self.stream = _stream_tracker(cfg, self.test_y)  # incremental runs only


class ServerRunner:
    def __init__(self, grid: Grid, cfg: Config, resume: bool = False, quiet: bool = False,
                 setup: ServerSetup | None = None) -> None:
        stamp("server: ServerApp started")
        self.grid, self.cfg, self.resume, self.quiet = grid, cfg, resume, quiet
        self.out = Path(cfg.run.out_dir)
        self.provenance = provenance()  # once: it asks git
        self.console = Console(stderr=True, quiet=quiet)
        setup = setup or ServerSetup(cfg)
        self.test_x, self.test_y, self.model = setup.test_x, setup.test_y, setup.model
        self.strategy, self.server_trainer, self.stream = setup.strategy, setup.server_trainer, setup.stream
        if self.stream is not None and self.server_trainer is not None:
            splits, idx = server_index(cfg)
            self._server_set = (splits.train_x[idx], idx)
        self._collapse_warned, self._init_share = False, math.nan
        self.confusion: dict[str, list] | None = None  # of the last evaluation (open world)
        pairs_with = cfg.algorithm_class.pairs_with
        if pairs_with and cfg.server.strategy != pairs_with:
            log.warning("client.algorithm=%s is meant for server.strategy=%s; with %s the clients "
                        "get no server payload and train without it", cfg.client.algorithm,
                        pairs_with, cfg.server.strategy)
        poll_replies_every(grid, REPLY_POLL_S)  # Flower's default 0.1 s would end each round late

    # ------------------------------------------------------------------------------
    def unseen_classes(self) -> tuple[list[int], list[int]]:
        """(locally, globally) unseen classes: unseen classes held by >= 2 / exactly 1
        of the partitions that have reported their classes so far."""
        holders = np.zeros(self.cfg.num_classes, dtype=int)
        for classes in self.strategy.classes.values():
            holders[list(classes)] += 1
        unseen = range(self.cfg.num_seen, self.cfg.num_classes)
        return [u for u in unseen if holders[u] >= 2], [u for u in unseen if holders[u] == 1]

    def evaluate(self, server_round: int, arrays: ArrayRecord) -> dict[str, float]:
        self.model.load_state_dict(arrays.to_torch_state_dict())
        local, glob = self.unseen_classes()
        if self.stream is not None:
            return self.stream.evaluate(self.model, server_round, local, glob)
        y_pred, logits = predict(self.model, self.test_x)
        if self.cfg.num_seen < self.cfg.num_classes:
            self.confusion = confusion_matrix(self.test_y, y_pred, self.cfg.num_classes, self.cfg.num_seen)
        return evaluate_logits(logits, self.test_y, self.cfg.num_classes, self.cfg.num_seen,
                               local_unseen=local, global_unseen=glob)

    def run(self) -> dict[str, Any]:
        cfg, out = self.cfg, self.out
        out.mkdir(parents=True, exist_ok=True)
        arrays = ArrayRecord(self.model.state_dict())
        st = _State()
        # A fresh run gets a new run id; a resumed one keeps its checkpoint's (no
        # checkpoint: it starts over, as a new run). Client state of other runs and
        # state saved after the checkpoint are deleted, never read.
        ckpt = runlog.load_checkpoint(out) if self.resume else None
        self.run_id = ckpt["run_id"] if ckpt is not None else runlog.new_run_id()
        ClientStateStore(self.state_dir).retain(self.run_id, ckpt["round"] if ckpt is not None else None)
        runlog.write_config(out, cfg.to_toml(), self.run_id)
        trackers = Trackers(cfg, out, self.run_id)  # run.tracking: fed the rows of metrics.csv
        if ckpt is not None:
            arrays = self._resume(ckpt, st)
        if self.server_trainer is not None and st.start_round == 1:  # warm-up before round 1
            arrays = self.server_step(0, arrays, {})
        if not math.isfinite(st.best_loss):  # the initial model's loss anchors divergence checks
            init = self.evaluate(0, arrays)
            st.best_loss, self._init_share = init["loss"], init["top_class_share"]
        stamp("server: initial evaluation done")
        t_start = time.time()
        rounds = cfg.federation.rounds
        progress = Progress(TextColumn("[bold]round"), MofNCompleteColumn(), BarColumn(),
                            TextColumn("{task.description}"), TimeElapsedColumn(),
                            TimeRemainingColumn(), console=self.console, transient=False)
        with progress:
            task = progress.add_task("", total=rounds, completed=st.start_round - 1)
            for rnd in range(st.start_round, rounds + 1):
                t_round = time.time()
                arrays, info = self._round(rnd, arrays, st.last_ckpt)
                st.client_updates += info.get("status") != "no_update"
                st.train_s.append(time.time() - t_round)
                row: dict[str, Any] = {"round": rnd, **info}
                if rnd % cfg.run.eval_every == 0 or rnd == rounds or (self.stream and self.stream.must_evaluate(rnd)):
                    row.update(self.evaluate(rnd, arrays))
                    row["wall_s"] = st.wall_offset + time.time() - t_start
                    row["round_s"] = time.time() - t_round
                    st.rows.append(row)
                    runlog.write_metrics(out, st.rows)
                    trackers.log_row(row)
                    self._warn_collapse(rnd, row, st)
                    if self._diverged(rnd, row, st):
                        break
                    progress.update(task, description=f"acc {row['acc_all']:.4f}  loss {row['loss']:.4f}")
                progress.advance(task)
                if cfg.run.checkpoint_every and (rnd % cfg.run.checkpoint_every == 0 or rnd == rounds):
                    self._checkpoint(rnd, arrays, st, st.wall_offset + time.time() - t_start)
        if st.status == "ok" and st.rows and not st.client_updates:
            # every round kept the previous model: nothing a client sent was used
            st.status = "no_client_update"
            log.warning("no round received an acceptable client update: the final model has learned "
                        "nothing from the clients (see failed_clients and rejected_updates in metrics.csv)")
        summary = self._summary(st, st.wall_offset + time.time() - t_start)
        trackers.finish(st.status)
        return summary

    def _round(self, rnd: int, arrays: ArrayRecord, keep_round: int) -> tuple[ArrayRecord, dict[str, Any]]:
        """One round through Flower's strategy verbs."""
        timeout = self.cfg.federation.round_timeout
        config = ConfigRecord({P.KEEP_ROUND_KEY: keep_round, RUN_ID_KEY: self.run_id,
                               **(self.stream.round_config(rnd) if self.stream else {})})
        messages = list(self.strategy.configure_train(rnd, arrays, config, self.grid))
        t0 = time.time()
        if rnd <= 2:
            stamp(f"server: round {rnd} sent")
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        t_send = time.time() - t0
        if rnd <= 2:
            stamp(f"server: round {rnd} replies in")
        new_arrays, metrics = self.strategy.aggregate_train(rnd, replies)
        info: dict[str, Any] = dict(metrics or {})
        info["t_round_trip_s"] = t_send
        if self.stream is not None:
            self.stream.observe(info, self.strategy.last_round.get("stream_clients", {}))
        eval_messages = list(self.strategy.configure_evaluate(rnd, new_arrays or arrays, ConfigRecord(),
                                                              self.grid))
        if eval_messages:
            res = self.strategy.aggregate_evaluate(rnd, self.grid.send_and_receive(eval_messages,
                                                                                 timeout=timeout))
            info.update({f"fed_{k}": v for k, v in (res or {}).items()})
        if new_arrays is None:
            info["status"] = "no_update"
            why = ("every client that replied had nothing to learn from" if info.get("idle_clients")
                   and not info.get("rejected_updates") else "no acceptable update")
            log.warning("round %d: %s; the aggregate is the previous model", rnd, why)
            new_arrays = arrays
        if self.server_trainer is not None:  # labels at server: after every aggregation
            new_arrays = self.server_step(rnd, new_arrays, info)
        return new_arrays, info

    def server_step(self, server_round: int, arrays: ArrayRecord, info: dict[str, Any]) -> ArrayRecord:
        """Train the global model on the server's labeled set (SemiFL's alternate
        training, ``fedssl.server_training``); round 0 is the warm-up before round 1."""
        assert self.server_trainer is not None
        if self.stream is not None:  # the server's labels in the current stage's domain
            self.server_trainer.x = self.stream.server_images(*self._server_set, server_round)
        self.model.load_state_dict(arrays.to_torch_state_dict())
        info.update(self.server_trainer.step(self.model, server_round))
        if self.cfg.server.bn_stats == "server_clients":  # static BN over the clients' data too
            info.update(federated_bn_stats(self.grid, self.strategy, self.model, normalize(self.server_trainer.x.clone()),
                                           self.run_id, self.cfg.federation.round_timeout))
        return ArrayRecord(self.model.state_dict())

    def _diverged(self, rnd: int, row: dict[str, Any], st: _State) -> bool:
        loss = row["loss"]
        if (self.stream is not None and math.isfinite(loss) and len(st.rows) > 1
                and row.get("stage") != st.rows[-2].get("stage")):
            st.best_loss = loss  # a new stage is a new domain: its loss anchors the check
        if math.isfinite(loss) and loss <= self.cfg.server.divergence_factor * max(st.best_loss, 1e-3):
            st.best_loss = min(st.best_loss, loss)
            return False
        st.status = row["status"] = "diverged"
        runlog.write_metrics(self.out, st.rows)
        log.warning("round %d: global loss %s diverged (best %.4g); stopping cleanly, the last good "
                    "checkpoint is kept", rnd, loss, st.best_loss)
        self.console.print(f"[red]stopped: global model diverged at round {rnd} (loss {loss}); "
                           f"last good checkpoint: round {st.last_ckpt}")
        return True

    def _warn_collapse(self, rnd: int, row: dict[str, Any], st: _State) -> None:
        """Warn once when the global model, after it has given varied answers, gives one
        answer to (nearly) every test sample: a finite, unremarkable loss hides this
        from the divergence stop."""
        share = row.get("top_class_share", math.nan)
        varied = self._init_share < VARIED_SHARE or any(
            r.get("top_class_share", 1.0) < VARIED_SHARE for r in st.rows[:-1])
        if self._collapse_warned or not varied or not share >= COLLAPSE_SHARE:
            return
        self._collapse_warned = True
        msg = (f"round {rnd}: the global model predicts one class for {share:.0%} of the test split "
               f"(acc_all {row['acc_all']:.3f}): it has collapsed. The usual cause is a client learning "
               f"rate too high for the model (client.lr = {self.cfg.client.lr:g}); try a lower one.")
        log.warning(msg)  # shown under --quiet too

    # -- checkpoint / resume / summary ------------------------------------------------
    @property
    def state_dir(self) -> Path:
        return self.out / "client_state"

    def _checkpoint(self, rnd: int, arrays: ArrayRecord, st: _State, wall_s: float) -> None:
        runlog.save_checkpoint(self.out, {
            "round": rnd, "arrays": {k: arrays[k].numpy() for k in arrays},
            "strategy": self.strategy.state_dict(), "rows": st.rows, "wall_s": wall_s,
            "best_loss": st.best_loss, "run_id": self.run_id, "client_updates": st.client_updates,
            "train_s": st.train_s,
            **({"server_training": self.server_trainer.state_dict()} if self.server_trainer else {}),
            **({"stream": self.stream.state_dict()} if self.stream else {}),
        })
        st.last_ckpt = rnd

    def _resume(self, ckpt: dict[str, Any], st: _State) -> ArrayRecord:
        self.strategy.load_state_dict(ckpt["strategy"])
        if self.server_trainer is not None:
            self.server_trainer.load_state_dict(ckpt.get("server_training", {}))
        if self.stream is not None:
            self.stream.load_state_dict(ckpt["stream"])
        st.rows = [r for r in ckpt["rows"] if r["round"] <= ckpt["round"]]
        st.start_round, st.wall_offset = ckpt["round"] + 1, ckpt["wall_s"]
        st.best_loss, st.last_ckpt = ckpt["best_loss"], ckpt["round"]
        st.client_updates = ckpt.get("client_updates", 1)
        st.train_s = list(ckpt.get("train_s", []))
        log.info("resuming %s after round %d", self.out, ckpt["round"])
        return ArrayRecord({k: _array(v) for k, v in ckpt["arrays"].items()})

    def _summary(self, st: _State, elapsed: float) -> dict[str, Any]:
        cfg = self.cfg
        final = st.rows[-1] if st.rows else {}
        local, glob = self.unseen_classes()
        summary = {
            "status": st.status,
            "run_id": self.run_id,
            "final": {k: v for k, v in final.items() if not k.startswith("acc_class_")},
            "per_class_accuracy": {str(k): final.get(f"acc_class_{k}") for k in range(cfg.num_classes)},
            "seen_classes": list(range(cfg.num_seen)),
            "local_unseen_classes": local,
            "global_unseen_classes": glob,
            **({"confusion_matrix": self.confusion} if self.confusion is not None else {}),
            "rounds_completed": final.get("round", 0),
            "elapsed_s": elapsed,
            "round_train_s": st.train_s,  # every round, a resumed run's included; evaluation excluded
            "config": cfg.to_dict(),
            **({"stream": self.stream.summary()} if self.stream else {}),
            **self.provenance,  # versions of fedssl, flwr, torch, ray; the git commit
        }
        runlog.write_json(self.out / "summary.json", summary)
        return summary


class _State:
    """What a run carries from round to round (and through a checkpoint)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.start_round, self.wall_offset, self.best_loss = 1, 0.0, math.inf
        self.last_ckpt, self.status = 0, "ok"
        self.client_updates = 0  # rounds that aggregated at least one client update
        self.train_s: list[float] = []  # per round: sample, send, train, validate, aggregate


def _stream_tracker(cfg: Config, test_y: np.ndarray) -> Any:
    if not cfg.stream.stages:
        return None
    from fedssl.server.stream import StreamTracker

    return StreamTracker(cfg, test_y)


def load_server_trainer(cfg: Config) -> ServerTrainer | None:
    """Labels at server: the trainer on the server's own labeled set, drawn from the
    train split exactly as the clients' partition sets it aside (None when off)."""
    if cfg.data.server_labels_per_class <= 0:
        return None
    splits, idx = server_index(cfg)
    return build_server_trainer(cfg, splits.train_x, splits.train_y, idx)


def server_index(cfg: Config) -> tuple[Any, np.ndarray]:
    """(dataset splits, train positions of the server's labeled samples)."""
    splits = load_dataset(cfg.data, cfg.run.seed)
    m = cfg.data.server_labels_per_class
    return splits, server_labeled(np.asarray(splits.train_y).astype(np.int64), m, splits.num_classes, cfg.run.seed,
                                  cfg.data.partition)


def load_test_split(cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """The held-out test split (NHWC uint8, labels): all the data the server uses."""
    splits = load_dataset(cfg.data, cfg.run.seed)
    return splits.test_x, splits.test_y


def _array(a: np.ndarray) -> Any:
    from flwr.app import Array

    return Array(np.asarray(a, order="C"))
