"""The pfl-research arm of ``sim_overhead.py``: the same workload in Apple's ``pfl``
(optional: ``pip install 'fedssl[bench]'``), run by ``sim_overhead.py`` as a process of
its own, on one process (``python``) or several (``torchrun --nproc_per_node=K``,
pfl's own multi-process simulation: each process trains its share of the cohort and
the statistics are summed with ``torch.distributed``).

Same model (fedssl's ``cnn``), same data (IID shards of Fashion-MNIST), same one
thread per process, the same local work: every client trains ``--steps`` SGD steps
(lr 0.03, momentum 0.9) of batch 32 with fedssl's weak augmentation each round, and
FedAvg averages all N clients (unweighted: the shards are equal). pfl applies the
mean model difference with a central SGD of learning rate 1, which is plain FedAvg.

    python benchmarks/pfl_arm.py --clients 200 --rounds 6 --steps 1
    torchrun --nproc_per_node=2 benchmarks/pfl_arm.py --clients 200 --rounds 6 --steps 1
    python benchmarks/pfl_arm.py --check     # pfl's FedAvg = a plain loop, small case

Prints one JSON line (rank 0): ``total_s`` (all rounds), ``rounds_s`` (each round),
``end_to_end_s`` (process start to the end of training, imports and data included).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path

import torch

T_START = time.time()
sys.path.insert(0, str(Path(__file__).parent))


class Net(torch.nn.Module):
    """fedssl's CNN with the ``loss`` and ``metrics`` pfl asks of a PyTorch module;
    ``augment``: fedssl's weak augmentation in the loss, as its clients train."""

    def __init__(self, augment: bool = True) -> None:
        super().__init__()
        from fedssl.models import build_model

        self.net = build_model("cnn", 10)
        self.augment = augment

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def loss(self, x: torch.Tensor, y: torch.Tensor, eval: bool = False) -> torch.Tensor:  # noqa: A002
        from fedssl.data.augment import normalize, weak

        return torch.nn.functional.cross_entropy(self.net(normalize(weak(x) if self.augment else x)), y)

    @torch.no_grad()
    def metrics(self, x: torch.Tensor, y: torch.Tensor, eval: bool = False) -> dict:  # noqa: A002
        return {}


def run_pfl(x: torch.Tensor, y: torch.Tensor, shards: list[torch.Tensor], rounds: int, steps: int,
            batch: int, augment: bool = True, init: dict | None = None) -> tuple[Net, list[float]]:
    """FedAvg over all ``len(shards)`` clients for ``rounds`` rounds; (model, seconds per round)."""
    from pfl.aggregate.simulate import SimulatedBackend
    from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
    from pfl.callback.base import TrainingProcessCallback
    from pfl.data.dataset import Dataset
    from pfl.data.federated_dataset import FederatedDataset
    from pfl.data.sampling import get_user_sampler
    from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams
    from pfl.metrics import Metrics
    from pfl.model.pytorch import PyTorchModel

    n = len(shards)
    data = FederatedDataset(lambda uid: Dataset(raw_data=[x[shards[uid]], y[shards[uid]]], user_id=str(uid)),
                            get_user_sampler("minimize_reuse", list(range(n))))
    net = Net(augment)
    if init is not None:
        net.net.load_state_dict(init)
    model = PyTorchModel(model=net, local_optimizer_create=functools.partial(torch.optim.SGD, momentum=0.9),
                         central_optimizer=torch.optim.SGD(net.parameters(), lr=1.0))
    stamps: list[float] = []

    class Clock(TrainingProcessCallback):
        def on_train_begin(self, *, model):  # noqa: ANN001
            stamps.append(time.perf_counter())
            return Metrics()

        def after_central_iteration(self, aggregate_metrics, model, *, central_iteration):  # noqa: ANN001
            stamps.append(time.perf_counter())
            return False, Metrics()

    FederatedAveraging().run(
        algorithm_params=NNAlgorithmParams(central_num_iterations=rounds, evaluation_frequency=rounds + 1,
                                           train_cohort_size=n, val_cohort_size=None),
        backend=SimulatedBackend(training_data=data, val_data=data),
        model=model,
        model_train_params=NNTrainHyperParams(local_num_epochs=None, local_num_steps=steps,
                                              local_learning_rate=0.03, local_batch_size=batch),
        model_eval_params=NNEvalHyperParams(local_batch_size=batch),
        callbacks=[Clock()], send_metrics_to_platform=False)
    return net, [b - a for a, b in zip(stamps, stamps[1:])]


def plain_fedavg(x: torch.Tensor, y: torch.Tensor, shards: list[torch.Tensor], rounds: int, steps: int,
                 batch: int, init: dict) -> dict:
    """The same FedAvg by hand: each client from the global model, ``steps`` SGD steps
    over its first batches in order, the mean of the updated models."""
    g = {k: v.clone() for k, v in init.items()}
    local = Net(augment=False)
    for _ in range(rounds):
        acc = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in g.items()}
        for idx in shards:
            local.net.load_state_dict(g)
            opt = torch.optim.SGD(local.parameters(), lr=0.03, momentum=0.9)
            for s in range(steps):
                b = idx[s * batch:(s + 1) * batch]
                loss = local.loss(x[b], y[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
            for k, v in local.net.state_dict().items():
                acc[k] += v.double() / len(shards)
        g = {k: v.float() for k, v in acc.items()}
    return g


def check() -> None:
    """pfl's FedAvg equals the plain loop on 6 clients x 3 rounds x 2 steps (no
    augmentation, so that both are deterministic): exits 1 if not."""
    torch.manual_seed(0)
    x = torch.randint(0, 255, (6 * 20, 1, 28, 28), dtype=torch.uint8)
    y = torch.randint(0, 10, (6 * 20,))
    shards = [torch.arange(i * 20, (i + 1) * 20) for i in range(6)]
    from fedssl.models import build_model

    init = build_model("cnn", 10).state_dict()
    net, _ = run_pfl(x, y, shards, rounds=3, steps=2, batch=10, augment=False, init=init)
    ref = plain_fedavg(x, y, shards, rounds=3, steps=2, batch=10, init=init)
    got = net.net.state_dict()
    worst = max(float((got[k] - ref[k]).abs().max()) for k in ref)
    moved = max(float((ref[k] - init[k]).abs().max()) for k in ref)
    ok = worst <= 1e-5 and moved > 1e-3
    print(json.dumps({"check": "pfl FedAvg vs plain loop", "max_abs_diff": worst, "max_abs_change": moved,
                      "equal": ok}))
    sys.exit(0 if ok else 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--check", action="store_true", help="pfl's FedAvg against the plain loop, then exit")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.check:
        check()
    from sim_overhead import shards

    torch.manual_seed(0)
    x, y, idxs = shards(args.clients)
    _, rounds_s = run_pfl(x, y, idxs, args.rounds, args.steps, 32)
    if int(os.environ.get("RANK", 0)) == 0:
        print(json.dumps({"total_s": sum(rounds_s), "rounds_s": rounds_s, "end_to_end_s": time.time() - T_START,
                          "processes": int(os.environ.get("WORLD_SIZE", 1))}), flush=True)


if __name__ == "__main__":
    main()
