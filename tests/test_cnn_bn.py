"""``model.name = "cnn_bn"``: the default CNN with batch norm. Its layout, every
algorithm training it (with and without client labels), and the labels-at-server
pipeline recomputing its statistics on the server's data (static BN)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from fedssl import runlog
from fedssl.registry import ALGORITHMS
from fedssl.config import resolve
from fedssl.models import build_model
from fedssl.threads import one_thread
from fedssl.training import ClientData, build_algorithm, train_client
from tests.conftest import tiny

CNN_KEYS = ["backbone.0.weight", "backbone.0.bias", "backbone.3.weight", "backbone.3.bias",
            "backbone.7.weight", "backbone.7.bias", "head.weight", "head.bias"]


def test_cnn_bn_has_batch_norm_after_each_conv_and_the_embedding():
    assert list(build_model("cnn", 10).state_dict()) == CNN_KEYS, "cnn's exchanged keys stay as they were"
    model = build_model("cnn_bn", 10)
    layers = list(model.backbone)
    after = [type(layers[i + 1]) for i, m in enumerate(layers) if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert after == [nn.BatchNorm2d, nn.BatchNorm2d, nn.BatchNorm1d]
    assert all(m.bias is None for m in layers if isinstance(m, (nn.Conv2d, nn.Linear)))  # BN's shift replaces it
    x = torch.randn(6, 1, 28, 28)
    assert model(x).shape == (6, 10) and model.features(x).shape == (6, model.feature_dim)
    before = model.backbone[1].running_mean.clone()
    model.eval()
    model(x)
    assert torch.equal(model.backbone[1].running_mean, before), "eval mode uses the running statistics"
    assert build_model("cnn_bn", 10, in_channels=3, image_size=32)(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def shard(labeled: int, n: int = 12, seed: int = 0) -> ClientData:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return ClientData(x[:labeled], y[:labeled], x, y, flip=False)


# open-world algorithms run with labels at the client only (docs/labels_at_server.md)
CASES = [(n, 6) for n in sorted(ALGORITHMS)] + [(n, 0) for n in sorted(ALGORITHMS) if not ALGORITHMS[n].open_world]


@pytest.mark.parametrize("name, labeled", CASES)
def test_every_algorithm_trains_cnn_bn(name, labeled):
    # a low threshold, so that an untrained model's pseudo-labels pass it
    low = {f"client.{name}.threshold": 0.05} if "threshold" in ALGORITHMS[name].params_class.__dataclass_fields__ else {}
    cfg = resolve(overrides={"client.algorithm": name, "client.local_steps": 2, "client.batch_size": 4,
                             "client.uratio": 2, "federation.rounds": 4, "model.name": "cnn_bn", **low,
                             **({"data.seen_classes": 6} if ALGORITHMS[name].open_world else {})})
    model = build_model("cnn_bn", cfg.num_classes, cosine_head=ALGORITHMS[name].open_world)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = train_client(model, build_algorithm(cfg), shard(labeled), cfg, server_round=3, partition_id=0,
                       state=None)
    after = model.state_dict()
    if not ALGORITHMS[name].uses_unlabeled and labeled == 0:  # supervised, EWC: nothing to learn from
        assert all(torch.equal(before[k], v) for k, v in after.items())
        return
    assert math.isfinite(res.metrics["train_loss"])
    assert not torch.equal(before["backbone.1.running_mean"], after["backbone.1.running_mean"])
    assert int(after["backbone.1.num_batches_tracked"]) > 0


def las_bn(out, **extra: object) -> dict[str, object]:
    """Overrides of a seconds-long labels-at-server SemiFL run on cnn_bn."""
    return tiny(out, **{"data.server_labels_per_class": 10, "data.labeled_ratio": 0.0,
                        "client.algorithm": "semifl", "client.semifl.threshold": 0.05, "model.name": "cnn_bn",
                        "server.strategy": "fedavgm", "server.server_momentum": 0.5,
                        "server.warmup_steps": 5, "server.train_steps": 5, "run.checkpoint_every": 1, **extra})


def las_bn_final_model(out, **extra: object):
    """A real labels-at-server simulation of SemiFL on cnn_bn: (config, its final global model)."""
    from fedssl.simulation import run_experiment

    cfg = resolve(overrides=las_bn(out, **extra))
    summary = run_experiment(cfg, quiet=True)
    assert summary["status"] == "ok" and math.isfinite(summary["final"]["loss"])
    arrays = runlog.load_checkpoint(out)["arrays"]
    model = build_model("cnn_bn", cfg.num_classes)
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()})
    return cfg, model


def test_labels_at_server_with_cnn_bn_recomputes_bn_on_server_data(tmp_path):
    """A real simulation: the global model's BN statistics are the server's static BN
    (recomputed on its labeled set after its step), not the clients' average."""
    from fedssl.data.augment import normalize
    from fedssl.server_training import recompute_bn_stats
    from fedssl.server.loop import load_server_trainer

    cfg, model = las_bn_final_model(tmp_path)
    got = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    trainer = load_server_trainer(cfg)
    assert trainer is not None
    with one_thread():  # as the server computes them: the same bits on any machine
        assert recompute_bn_stats(model, normalize(trainer.x.clone()))
    for k, v in model.state_dict().items():
        if "running" in k:
            assert torch.equal(got[k], v), (k, (got[k] - v).abs().max())


def test_semifl_forwards_each_view_with_its_own_batch_statistics_on_a_bn_model():
    from fedssl.algorithms.semifl import forward_views

    torch.manual_seed(0)
    views = [torch.randn(4, 1, 28, 28), torch.randn(3, 1, 28, 28) + 2.0, torch.empty(0, 1, 28, 28)]
    model = build_model("cnn_bn", 10).train()
    per_view = forward_views(model, views, per_view=True)
    joint = forward_views(model, views, per_view=False)
    # by hand: each non-empty view normalised by its own statistics, or all together
    assert torch.allclose(per_view, torch.cat([model(views[0]), model(views[1])]), atol=1e-6)
    assert torch.allclose(joint, model(torch.cat(views)), atol=1e-6)
    assert per_view.shape == joint.shape == (7, 10) and not torch.allclose(per_view, joint, atol=1e-3)
    # a one-sample view cannot be normalised alone in train mode: the joint forward
    one = [views[0], views[1][:1]]
    assert torch.allclose(forward_views(model, one, per_view=True), model(torch.cat(one)), atol=1e-6)
    # the choice follows the model: only a model with batch norm runs one forward per view
    from fedssl.algorithms.base import RoundContext

    def per_view_after_begin_round(model_name: str, **extra: object) -> bool:
        algo = build_algorithm(resolve(None, tiny("unused", **{"client.algorithm": "semifl", **extra})))
        data = type("Shard", (), {"x_u": torch.rand(5, 1, 28, 28), "flip": False})()
        algo.begin_round(build_model(model_name, 10), RoundContext(server_round=1), data)
        return algo._per_view

    assert not per_view_after_begin_round("cnn") and per_view_after_begin_round("cnn_bn")
    assert not per_view_after_begin_round("cnn_bn", **{"client.semifl.bn_forward": "joint"})


def test_static_bn_over_server_and_clients_in_a_flower_simulation(tmp_path):
    """``server.bn_stats = "server_clients"`` (SemiFL's sbn = 1), a real simulation: the
    global model's BN statistics are the average over the batches of the server's
    labeled set and of every client's whole shard, computed by hand from the final
    weights, and they differ from the server's alone."""
    from fedssl.data.augment import normalize
    from fedssl.server.loop import load_server_trainer
    from fedssl.static_bn import add_sums, bn_stat_sums, set_bn_stats
    from fedssl.client.runtime import ClientRuntime

    cfg, model = las_bn_final_model(tmp_path, **{"server.bn_stats": "server_clients"})
    got = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    trainer = load_server_trainer(cfg)
    assert trainer is not None
    rt = ClientRuntime(cfg, {})
    with one_thread():
        total = bn_stat_sums(model, normalize(trainer.x.clone()))
        for pid in range(cfg.data.num_clients):
            d = rt.shard(pid)
            add_sums(total, bn_stat_sums(model, normalize(torch.cat([d.x_l, d.x_u]))))
    server_batches = 1  # 100 labeled images: one batch of <= 256
    client_batches = sum(math.ceil(len(rt.shard(p).y_u) / 256) for p in range(cfg.data.num_clients))
    assert int(got["backbone.1.num_batches_tracked"]) == server_batches + client_batches
    set_bn_stats(model, total)
    for k, v in model.state_dict().items():
        if k in got:
            assert torch.allclose(got[k].double(), v.double(), rtol=1e-5, atol=1e-6), (k, (got[k] - v).abs().max())
    server_only = bn_stat_sums(model, normalize(trainer.x.clone()))
    assert not np.allclose(server_only["backbone.1.mean_sum"], total["backbone.1.mean_sum"] / (1 + client_batches))


def test_static_bn_sums_add_up_and_a_bad_share_is_named():
    from fedssl.server_training import recompute_bn_stats
    from fedssl.static_bn import add_sums, bn_stat_sums, check_sums, set_bn_stats

    torch.manual_seed(0)
    model, x = build_model("cnn_bn", 10), torch.randn(600, 1, 28, 28)
    whole = bn_stat_sums(model, x, batch_size=200)
    parts = bn_stat_sums(model, x[:400], batch_size=200)
    add_sums(parts, bn_stat_sums(model, x[400:], batch_size=200))
    assert all(np.allclose(whole[k], parts[k]) for k in whole)
    assert whole["backbone.1.batches"][0] == 3
    # the sums over their count are BN's own cumulative average over the same batches
    by_sums, by_bn = build_model("cnn_bn", 10), build_model("cnn_bn", 10)
    by_sums.load_state_dict(model.state_dict())
    by_bn.load_state_dict(model.state_dict())
    set_bn_stats(by_sums, whole)
    recompute_bn_stats(by_bn, x, batch_size=200)
    for k, v in by_bn.state_dict().items():
        assert torch.allclose(v.double(), by_sums.state_dict()[k].double(), atol=1e-6), k
    assert check_sums(parts, whole) is None
    bad = dict(parts, **{"backbone.1.var_sum": -parts["backbone.1.var_sum"]})
    assert check_sums(bad, whole) == "backbone.1.var_sum is negative"
    nan = dict(parts, **{"backbone.5.mean_sum": np.full_like(parts["backbone.5.mean_sum"], np.nan)})
    assert check_sums(nan, whole) == "backbone.5.mean_sum is not finite"
    short = dict(parts, **{"backbone.5.mean_sum": parts["backbone.5.mean_sum"][:3]})
    assert "has shape (3,)" in check_sums(short, whole)
    assert check_sums({"x": np.zeros(1)}, whole) == "its BN statistics name other layers"


def test_kill9_then_resume_with_static_bn_over_the_clients_is_exact(tmp_path):
    """``server.bn_stats = "server_clients"``: the statistics the query sets after a
    round live in the checkpointed global model, so kill -9 after round 2 and --resume
    give the uninterrupted run's rows and final weights and BN buffers, bit for bit."""
    import csv

    from fedssl.simulation import run_experiment
    from tests.conftest import kill9_after_checkpoint, run_cli

    killed = tmp_path / "killed"
    over = las_bn(killed, **{"federation.rounds": 4, "server.bn_stats": "server_clients"})
    kill9_after_checkpoint(over, killed)
    resumed = run_cli("run", "--resume", str(killed), "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight = tmp_path / "straight"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # another server thread count than the resumed process's: same bits
    try:
        run_experiment(resolve(overrides={**over, "run.out_dir": str(straight)}), quiet=True)
    finally:
        torch.set_num_threads(threads)

    def rows(out):
        with open(out / "metrics.csv") as f:
            return [{k: v for k, v in r.items() if not k.startswith(("wall_s", "round_s", "t_"))}
                    for r in csv.DictReader(f)]

    got, want = rows(killed), rows(straight)
    assert [r["round"] for r in got] == ["1", "2", "3", "4"]
    assert all(int(r["bn_clients"]) > 0 for r in got)  # the query ran in every round
    assert got == want
    a, b = runlog.load_checkpoint(killed)["arrays"], runlog.load_checkpoint(straight)["arrays"]
    assert a.keys() == b.keys() and any("running_mean" in k for k in a)
    for k in a:
        assert np.array_equal(np.asarray(a[k]), np.asarray(b[k])), k
