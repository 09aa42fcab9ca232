"""fedssl.optim.SGD against torch.optim.SGD, bit for bit, and a client round, a server
step and the global clustering that never import torch._dynamo."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from fedssl.optim import SGD


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 6 * 6, 3), torch.nn.Linear(3, 3))


@pytest.mark.parametrize("momentum,weight_decay,nesterov", [(0.0, 0.0, False), (0.9, 0.0, False),
                                                            (0.9, 5e-4, True), (0.5, 1e-4, False)])
def test_sgd_equals_torch_optim_sgd_bit_for_bit(momentum, weight_decay, nesterov):
    ours, theirs = _model(), _model()
    frozen = [m[-1].weight for m in (ours, theirs)]  # a parameter left without gradient in some steps
    opt_ours = SGD(ours.parameters(), lr=0.03, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    opt_theirs = torch.optim.SGD(theirs.parameters(), lr=0.03, momentum=momentum, weight_decay=weight_decay,
                                 nesterov=nesterov)
    gen = torch.Generator().manual_seed(1)
    for step in range(6):
        x, y = torch.randn(8, 1, 8, 8, generator=gen), torch.randint(0, 3, (8,), generator=gen)
        for model, opt, w in ((ours, opt_ours, frozen[0]), (theirs, opt_theirs, frozen[1])):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            if step % 3 == 1:
                w.grad = None
            opt.step()
        for a, b in zip(ours.parameters(), theirs.parameters()):
            assert torch.equal(a, b), step
    for a, b in zip(ours.parameters(), theirs.parameters()):
        mine, torch_buf = opt_ours.state[a].get("momentum_buffer"), opt_theirs.state[b].get("momentum_buffer")
        assert (mine is None) == (torch_buf is None) and (mine is None or torch.equal(mine, torch_buf))
    assert any(p.grad is not None for p in ours.parameters())
    opt_ours.zero_grad(set_to_none=False)
    assert all(p.grad is None or not p.grad.any() for p in ours.parameters())


def test_nesterov_without_momentum_is_refused_as_torch_does():
    with pytest.raises(ValueError, match="Nesterov"):
        SGD(_model().parameters(), lr=0.1, nesterov=True)


TRAIN_WITHOUT_DYNAMO = """
import sys
import numpy as np, torch
from fedssl.config import resolve
from fedssl.data.tensors import client_data
from fedssl.global_clustering import refine_centroids
from fedssl.models import build_model
from fedssl.server_training import build_server_trainer
from fedssl.training import build_algorithm, train_client
cfg = resolve(None, {"data.dataset": "synthetic", "client.algorithm": "supervised", "client.local_steps": 2,
                     "client.batch_size": 4, "client.uratio": 1, "data.server_labels_per_class": 2,
                     "server.warmup_steps": 2})
gen = np.random.default_rng(0)
x = gen.integers(0, 255, (24, 28, 28, 1), dtype=np.uint8)
y = np.arange(24) % 10
model = build_model("cnn", 10)
train_client(model, build_algorithm(cfg), client_data(x, y, np.arange(12), np.arange(12, 24)), cfg,
             server_round=1, partition_id=0, state=None)
build_server_trainer(cfg, x, y, np.arange(20)).step(model, 0)
refine_centroids(gen.random((4, 8)), gen.random((6, 8)), steps=2)
print("dynamo" if "torch._dynamo" in sys.modules else "no dynamo")
"""


def test_training_imports_no_torch_dynamo():
    """A supervised client round, the server's step and the global clustering run
    without torch._dynamo, which torch.optim's optimizers import when built (1-2 s of
    CPU in every process that trains). Strong augmentation still imports it, through
    torchvision."""
    proc = subprocess.run([sys.executable, "-c", TRAIN_WITHOUT_DYNAMO], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "no dynamo", proc.stdout
