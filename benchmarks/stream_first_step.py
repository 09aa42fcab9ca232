"""What the first local steps of a [stream] run's last stage do to the old domains.

Starts from the model a client distils from in the last stage (``stream.teacher`` in
its state file: the global model at the end of the stage before) and trains one copy,
as one client would in the stage's first round: ``--steps`` SGD steps (lr 0.03,
Nesterov momentum 0.9, weight decay 5e-4, batch 32, cross-entropy on labels) on test
images 0 .. steps x 32 of one domain. It prints the gradient norm of every step and
the accuracy on every domain afterwards (test images 1000 on), with and without
clipping the gradient at ``--clip``, for the last stage's domain and, as a control,
the one before.

    python benchmarks/stream_first_step.py runs/stream/fedmobile/seed2 [--steps 10] [--clip 1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from fedssl.config import ConfigError, resolve
from fedssl.data import load_dataset
from fedssl.data.augment import normalize
from fedssl.data.tensors import nchw_tensor
from fedssl.models import build_model
from fedssl.state import ClientStateStore
from fedssl.stream.stages import test_domains

PREFIX = "stream.teacher."
BATCH, HELD_OUT = 32, 1000


def first_steps(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, clip: float) -> list[float]:
    """``steps`` SGD steps on consecutive batches; the gradient norm of each, before clipping."""
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, nesterov=True, weight_decay=5e-4)
    norms = []
    for s in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x[s * BATCH:(s + 1) * BATCH]), y[s * BATCH:(s + 1) * BATCH]).backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip if clip > 0 else float("inf"))))
        opt.step()
    return norms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--clip", type=float, default=1.0)
    args = ap.parse_args()
    cfg = resolve(str(args.run / "config.toml"))
    state = load_file(ClientStateStore(args.run / "client_state").newest(0))
    start = {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}
    y = torch.tensor(load_dataset(cfg.data, cfg.run.seed).test_y, dtype=torch.long)
    domains = cfg.stream.domains.split(",")[:cfg.stream.stages]
    xs = [normalize(nchw_tensor(x)) for x in test_domains(cfg)]
    print("| trained on | clip | gradient norm per step | " + " | ".join(domains) + " |")
    print("|---|---|---|" + "---|" * len(domains))
    for new in (len(domains) - 2, len(domains) - 1):
        for clip in (0.0, args.clip):
            torch.manual_seed(cfg.run.seed)
            model = build_model(cfg.model.name, cfg.num_classes, in_channels=1, image_size=28)
            model.load_state_dict(start)
            norms = first_steps(model, xs[new], y, args.steps, clip)
            model.eval()
            with torch.no_grad():
                acc = [float((model(x[HELD_OUT:]).argmax(1) == y[HELD_OUT:]).float().mean()) for x in xs]
            print(f"| {domains[new]} | {clip or 'off'} | {' '.join(f'{n:.1f}' for n in norms)} | "
                  + " | ".join(f"{100 * a:.0f}" for a in acc) + " |")


if __name__ == "__main__":
    try:
        main()
    except (ConfigError, OSError) as e:  # not a finished stream run with client state
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        sys.exit(2)
