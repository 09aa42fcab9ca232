"""Client state keyed by run and bounded on disk, pickle-free checkpoints, update key
order, stock-server evaluation and training-metric averaging (issue 14)."""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import MetricRecord, RecordDict
from safetensors.numpy import save as st_save
from safetensors.torch import save_file

from fedssl.client.runtime import ClientRuntime
from fedssl import runlog
from fedssl.algorithms.fixmatch import FixMatch
from fedssl.config import ConfigError, resolve
from fedssl.metrics import pseudo_label_accuracy
from fedssl.models import build_model
from fedssl.sampling import sample_clients
from fedssl.simulation import run_experiment
from fedssl.state import ClientStateStore, _crc
from fedssl.training import ClientData, train_client
from fedssl.strategies.validation import check_update, in_global_order
from tests.conftest import as_set_flags, assert_bad_input, run_cli, tiny
from tests.test_strategies import _server_identity, aggregate, build, to_arrayrecord  # noqa: F401 (fixture)
from tests.test_strategies import update as reply

TIME_COLS = ("wall_s", "round_s", "t_")


def metrics(out: Path) -> list[dict[str, str]]:
    with open(out / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if not k.startswith(TIME_COLS)} for r in csv.DictReader(f)]


def state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"teacher.w": torch.randn(3, 4, generator=g), "algo.n": torch.tensor([seed], dtype=torch.int64)}


# -- the store ----------------------------------------------------------------------
def test_state_is_keyed_by_run(tmp_path):
    store = ClientStateStore(tmp_path)
    store.save(3, "runA", 5, state(1))
    assert store.load(3, "runB") is None  # another run's file is never read
    assert store.load(3, "runA")[0] == 5
    store.save(3, "runB", 1, state(2))  # ... and saving prunes it
    assert [(pid, rid, r) for pid, rid, r, _ in store.files()] == [(3, "runB", 1)]
    with pytest.raises(ValueError, match="run id"):
        store.load(3, "../etc")


def test_scalar_and_bool_state_round_trips(tmp_path):
    """0-d tensors (ORCA's margin) and bools are saved, checksummed and read back."""
    store = ClientStateStore(tmp_path)
    st = {"algo.margin": torch.tensor(0.25), "algo.seen": torch.tensor([True, False]), **state(4)}
    store.save(0, "run", 1, st)
    rnd, got = store.load(0, "run")
    assert rnd == 1 and set(got) == set(st)
    for k in st:
        assert torch.equal(got[k], st[k]) and got[k].shape == st[k].shape, k


@pytest.mark.parametrize("checkpoint_every", [0, 1, 7])
def test_state_on_disk_is_bounded_whatever_the_rounds(tmp_path, checkpoint_every):
    # 200 rounds of 20 clients, each round a different half of them trains (any
    # sampling: the bound holds per client and does not depend on the round count).
    store, rng = ClientStateStore(tmp_path), np.random.default_rng(0)
    last_ckpt, t = 0, state(0)
    for rnd in range(1, 201):
        for pid in rng.choice(20, size=10, replace=False):
            store.save(int(pid), "run", rnd, t, keep_round=last_ckpt)
        if checkpoint_every and rnd % checkpoint_every == 0:
            last_ckpt = rnd
        per_client = {}
        for pid, *_ in store.files():
            per_client[pid] = per_client.get(pid, 0) + 1
        assert max(per_client.values()) <= (2 if checkpoint_every else 1)
    assert len(store.files()) <= (40 if checkpoint_every else 20)
    if checkpoint_every:  # a resume from the last checkpoint finds each client's state of that time
        for pid in store.ids():
            got = store.load(pid, "run", before_round=last_ckpt + 1)
            assert got is None or got[0] <= last_ckpt


def test_corrupt_state_file_starts_the_client_fresh_with_one_warning(tmp_path, caplog):
    store = ClientStateStore(tmp_path)
    store.save(0, "run", 1, state(1))
    store.save(1, "run", 1, state(2))
    (p0,) = [p for pid, *_, p in store.files() if pid == 0]
    p0.write_bytes(p0.read_bytes()[:-7])  # truncated
    (p1,) = [p for pid, *_, p in store.files() if pid == 1]
    raw = bytearray(p1.read_bytes())
    raw[-1] ^= 0xFF  # one flipped bit of tensor data: caught by the CRC
    p1.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, logger="fedssl"):
        assert store.load(0, "run") is None and store.load(1, "run") is None
        assert store.load(0, "run") is None  # warned once: the bad file is gone
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "corrupt" in warnings[0].getMessage()
    store.save(0, "run", 2, state(3))  # and the client goes on
    assert store.load(0, "run")[0] == 2


def test_corrupt_state_file_does_not_stop_the_run(tmp_path, caplog):
    cfg = resolve(overrides=tiny(tmp_path / "r", **{"client.local_steps": 2}))
    rt = ClientRuntime(cfg, {})
    data = rt.shard(0)
    rt.store.save(0, "run", 1, state(0))
    (p,) = [p for *_, p in rt.store.files()]
    p.write_bytes(b"\x00" * 20)
    with caplog.at_level(logging.WARNING, logger="fedssl"):
        got = rt.store.load(0, "run", before_round=2)
        res = train_client(rt.model, rt.algorithm, data, cfg, server_round=2, partition_id=0, state=got)
    assert got is None and res.state and sum("corrupt" in r.getMessage() for r in caplog.records) == 1


# -- two runs in one directory --------------------------------------------------------
def _poison(out: Path) -> list[Path]:
    """Rewrite every state file of the run in ``out`` as a valid file of that run whose
    teacher is garbage: a later run that read any of them would train differently."""
    poisoned = []
    for pid, rid, rnd, p in ClientStateStore(out / "client_state").files():
        from safetensors.torch import load_file

        g = torch.Generator().manual_seed(pid)  # random, not constant: a constant teacher can
        t = {k: (torch.randn(v.shape, generator=g) * 3 if v.is_floating_point() else v)  # agree with a collapsed model
             for k, v in load_file(p).items()}
        save_file(t, p, metadata={"run-id": rid, "round": str(rnd), "partition-id": str(pid), "crc32": _crc(t)})
        poisoned.append(p)
    return poisoned


def test_a_second_run_in_the_same_directory_reads_nothing_of_the_first(tmp_path, caplog):
    sampled = {"data.num_clients": 8, "federation.fraction_train": 0.5, "federation.min_clients": 2,
               "federation.rounds": 3, "client.fixmatch.threshold": 0.01, "run.checkpoint_every": 0}
    first = run_experiment(resolve(overrides=tiny(tmp_path / "same", **sampled, **{"run.seed": 2})), quiet=True)
    old = {(pid, r) for pid, _, r, _ in ClientStateStore(tmp_path / "same" / "client_state").files()}
    _poison(tmp_path / "same")
    # The test can fail: some client the second run first trains in round r has a file of
    # the first run from before r, which a store keyed by directory would load.
    first_in_b: dict[int, int] = {}
    for rnd in (3, 2, 1):
        first_in_b.update({pid: rnd for pid in sample_clients(8, 0.5, 2, 0, rnd)})
    assert any(pid in first_in_b and r < first_in_b[pid] for pid, r in old), old
    # as `flwr run` or a SuperNode's persistent state-dir would: same out_dir, no CLI guard
    over = tiny(tmp_path / "same", **sampled)
    with caplog.at_level(logging.WARNING, logger="fedssl"):
        second = run_experiment(resolve(overrides=over), quiet=True)
    run_experiment(resolve(overrides={**over, "run.out_dir": str(tmp_path / "clean")}), quiet=True)
    assert second["run_id"] != first["run_id"]
    assert metrics(tmp_path / "same") == metrics(tmp_path / "clean")  # no teacher of run 1 was used
    assert not any("corrupt" in r.getMessage() for r in caplog.records)
    left = ClientStateStore(tmp_path / "same" / "client_state").files()
    assert left and {rid for _, rid, *_ in left} == {second["run_id"]}  # run 1's files are gone


def test_second_cli_run_refuses_without_overwrite_and_starts_clean_with_it(tmp_path):
    out = tmp_path / "o"
    over = tiny(out, **{"client.fixmatch.threshold": 0.01})
    assert run_cli("run", "--quiet", *as_set_flags(over)).returncode == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert_bad_input(run_cli("run", "--quiet", *as_set_flags(over)), "--overwrite")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing lost
    first_id = json.loads((out / "summary.json").read_text())["run_id"]
    _poison(out)
    again = run_cli("run", "--quiet", "--overwrite", *as_set_flags(over))
    assert again.returncode == 0, again.stderr[-2000:]
    run_experiment(resolve(overrides={**over, "run.out_dir": str(tmp_path / "clean")}), quiet=True)
    assert metrics(out) == metrics(tmp_path / "clean")
    second_id = json.loads((out / "summary.json").read_text())["run_id"]
    assert second_id != first_id and (out / "config.toml").read_text().startswith(runlog.RUN_ID_LINE + second_id)
    assert {rid for _, rid, *_ in ClientStateStore(out / "client_state").files()} == {second_id}


def test_a_killed_run_without_metrics_still_blocks_the_directory(tmp_path):
    out = tmp_path / "k"
    (out / "client_state" / "client_00000").mkdir(parents=True)
    (out / "client_state" / "client_00000" / "x.r000001.safetensors").write_bytes(b"state")
    assert_bad_input(run_cli("run", *as_set_flags(tiny(out))), "--overwrite")
    assert (out / "client_state" / "client_00000" / "x.r000001.safetensors").read_bytes() == b"state"


# -- checkpoints ----------------------------------------------------------------------
def _resumable(out: Path) -> None:
    runlog.write_config(out, resolve(overrides=tiny(out)).to_toml(), "abc")


def _damage(out: Path, damage: str) -> None:
    runlog.save_checkpoint(out, {"round": 1, "arrays": {"w": np.ones(4, np.float32)}, "run_id": "abc"})
    p = out / runlog.CHECKPOINT
    raw = p.read_bytes()
    if damage == "version":
        meta = {"format": runlog.CHECKPOINT_FORMAT, "version": "99", "state": "{}"}
        p.write_bytes(st_save({"w": np.ones(4, np.float32)}, metadata=meta))
    elif damage == "truncated":
        p.write_bytes(raw[:-5])
    elif damage == "garbage":
        p.write_bytes(b"not a checkpoint at all")
    elif damage == "bitflip":
        p.write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))
    else:  # an old torch.save checkpoint is not unpickled
        p.unlink()
        (out / "checkpoint.pt").write_bytes(b"\x80\x04K\x01.")


@pytest.mark.parametrize("damage", ["version", "truncated", "garbage", "bitflip", "pickle"])
def test_bad_checkpoint_is_detected(tmp_path, damage):
    _damage(tmp_path, damage)
    with pytest.raises(ConfigError) as e:
        runlog.load_checkpoint(tmp_path)
    assert "checkpoint" in str(e.value) and "\n" not in str(e.value)
    if damage == "version":
        assert "version '99' is not supported" in str(e.value)


@pytest.mark.parametrize("damage", ["version", "bitflip"])
def test_bad_checkpoint_is_a_one_line_error_on_resume(tmp_path, damage):
    out = tmp_path / "c"
    _resumable(out)
    _damage(out, damage)
    assert_bad_input(run_cli("run", "--resume", str(out), "--quiet"), "checkpoint")


def test_checkpoint_round_trips_arrays_and_json(tmp_path):
    strategy = {"m": [np.zeros((2, 2), np.float32), np.arange(3)], "none": None,
                "rec": {"__arrayrecord__": {"b": np.array(7, dtype=np.int64)}}}
    st = {"round": 4, "arrays": {"w": np.ones((2, 3), np.float32)}, "strategy": strategy,
          "rows": [{"round": 1, "loss": float("nan")}], "best_loss": math.inf, "run_id": "r1"}
    runlog.save_checkpoint(tmp_path, st)
    got = runlog.load_checkpoint(tmp_path)
    assert got["round"] == 4 and got["run_id"] == "r1" and got["best_loss"] == math.inf
    assert math.isnan(got["rows"][0]["loss"]) and got["strategy"]["none"] is None
    b = got["strategy"]["rec"]["__arrayrecord__"]["b"]
    assert b.shape == () and b.dtype == np.int64 and int(b) == 7
    assert [a.dtype for a in got["strategy"]["m"]] == [np.float32, np.int64]
    assert b"pickle" not in (tmp_path / runlog.CHECKPOINT).read_bytes()


# -- update key order -----------------------------------------------------------------
def _update(arrays: dict[str, np.ndarray], n: int) -> RecordDict:
    return RecordDict({"arrays": to_arrayrecord(arrays), "metrics": MetricRecord({"num-examples": n})})


@pytest.mark.parametrize("strategy", ["fedavg", "fedavgm", "fedadam", "fedyogi", "fedprox"])
def test_reversed_key_order_aggregates_like_the_normal_order(strategy):
    glob = {k: v.numpy() for k, v in build_model("cnn", 10).state_dict().items()}
    rng = np.random.default_rng(0)
    ups = [{k: (v + rng.normal(0, 0.1, v.shape)).astype(v.dtype) for k, v in glob.items()} for _ in range(3)]
    results = []
    for reverse in (False, True):
        s = build(strategy, server_momentum=0.9)
        out = glob
        for rnd in (1, 2):  # two rounds: server momentum pairs this round with the last
            replies = []
            for i, u in enumerate(ups):
                d = dict(reversed(list(u.items()))) if reverse and i == 0 else u
                assert check_update(_update(d, 10 + i), out, None) is None
                replies.append(reply(i, d, 10 + i))
            out = aggregate(s, rnd, out, replies)
        results.append(out)
    assert list(results[1]) == list(glob)
    for k in glob:
        np.testing.assert_array_equal(results[0][k], results[1][k], err_msg=k)


def test_update_with_another_dtype_is_rejected_and_reorder_is_exact():
    glob = {"a": np.zeros(3, np.float32), "b": np.zeros((), np.int64)}
    bad = _update({"a": np.zeros(3, np.float64), "b": np.zeros((), np.int64)}, 1)
    assert "dtype float64, expected float32" in check_update(bad, glob, None)
    rec = to_arrayrecord({"b": glob["b"], "a": glob["a"]})
    assert list(in_global_order(rec, glob).keys()) == ["a", "b"]


# -- stock-server evaluation ----------------------------------------------------------
def test_stock_evaluation_uses_held_out_labels_and_never_nan(tmp_path):
    cfg = resolve(overrides=tiny(tmp_path, **{"data.labeled_ratio": 0.1}))
    rt = ClientRuntime(cfg, {"partition-id": 0})
    full = rt.shard(0)
    train, held = rt.split_holdout(0)
    assert len(held.y_l) >= 1 and len(train.y_l) + len(held.y_l) == len(full.y_l)
    rows_of = lambda d: {bytes(x.numpy()) for x in d.x_l}
    assert not rows_of(train) & rows_of(held)  # evaluation never scores training labels
    m = rt.evaluate_local(0)
    assert m["num-examples"] == len(held.y_l) and all(math.isfinite(v) for v in m.values())
    empty = ClientData(full.x_l[:0], full.y_l[:0], full.x_u, full.y_u)
    rt.shard = lambda pid: empty  # a client without labels
    m = rt.evaluate_local(0)
    assert m == {"num-examples": 0, "eval_loss": 0.0, "eval_acc": 0.0}


# -- training metrics -----------------------------------------------------------------
class _SparseFixMatch(FixMatch):
    """FixMatch whose pl_acc is emitted on even steps only, with a known value."""

    def loss(self, model, batch, ctx):
        loss, m = super().loss(model, batch, ctx)
        m.pop("pl_acc", None)
        if ctx.step % 2 == 0:
            m["pl_acc"] = float(ctx.step)
        return loss, m


def test_metrics_are_averaged_over_the_steps_that_emitted_them():
    cfg = resolve(overrides={"client.local_steps": 5, "client.batch_size": 4, "client.uratio": 1})
    g = torch.Generator().manual_seed(0)
    img = lambda: torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8, generator=g)
    data = ClientData(img(), torch.arange(8) % 10, img(), torch.arange(8) % 10, flip=False)
    alg = _SparseFixMatch(cfg.client, 10, 10)
    res = train_client(build_model("cnn", 10), alg, data, cfg, server_round=1, partition_id=0, state=None)
    assert res.metrics["train_pl_acc"] == pytest.approx((0 + 2 + 4) / 3)  # not / 5
    assert 0 <= res.metrics["train_mask"] <= 1


def test_pl_acc_ignores_samples_without_a_true_label():
    pl = torch.tensor([1, 2, 3, 4])
    y = torch.tensor([1, -1, 0, -1])
    mask = torch.ones(4)
    assert pseudo_label_accuracy(pl, y, mask) == pytest.approx(0.5)  # 1 of the 2 labeled, not 1 of 4
    assert pseudo_label_accuracy(pl, torch.full((4,), -1), mask) is None  # nothing to score: no metric
    assert pseudo_label_accuracy(pl, y, torch.tensor([0.0, 1.0, 0.0, 1.0])) is None


@pytest.mark.parametrize("checkpoint_every,per_client", [(0, 1), (3, 2)])
def test_real_run_leaves_at_most_one_or_two_state_files_per_client(tmp_path, checkpoint_every, per_client):
    # 20 FixMatch clients, half sampled per round; the bound is per client and does not
    # grow with rounds (the 200-round case is test_state_on_disk_is_bounded_whatever_the_rounds).
    out = tmp_path / "b"
    summary = run_experiment(resolve(overrides=tiny(out, **{
        "data.num_clients": 20, "federation.fraction_train": 0.5, "federation.rounds": 10,
        "client.local_steps": 1, "run.checkpoint_every": checkpoint_every, "run.eval_every": 10})),
        quiet=True)
    files = ClientStateStore(out / "client_state").files()
    per = {}
    for pid, rid, *_ in files:
        assert rid == summary["run_id"]
        per[pid] = per.get(pid, 0) + 1
    assert len(per) > 10 and max(per.values()) <= per_client and len(files) <= 20 * per_client
    assert not list((out / "client_state").rglob(".state.*"))  # no temp file left
