"""How the distillation teacher of a [stream] run's last stage answers on every domain.

Reads the previous stage's global model that a client keeps (``stream.teacher`` in its
state file under RUN/client_state) and prints, per domain of the run's test split: its
accuracy, its mean top probability at T = 1 and at the distillation temperature, the
entropy of the tempered target, and the share of the most predicted class. A teacher
that is wrong but unsure gives near-uniform targets; one that is wrong and sure pulls
the student to its mistakes.

    python benchmarks/stream_teacher.py runs/stream/fedmobile/seed0 [RUN ...] [--temperature 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from fedssl.config import ConfigError, resolve
from fedssl.data import load_dataset
from fedssl.data.augment import normalize
from fedssl.data.tensors import nchw_tensor
from fedssl.models import build_model
from fedssl.state import ClientStateStore
from fedssl.stream.stages import test_domains

PREFIX = "stream.teacher."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--temperature", type=float, default=2.0)
    args = ap.parse_args()
    print("| run | domain | teacher acc | max prob T=1 | max prob T=T_kd | target entropy | top-class share |")
    print("|---|---|---|---|---|---|---|")
    for run in args.runs:
        cfg = resolve(str(run / "config.toml"))
        state = load_file(ClientStateStore(run / "client_state").newest(0))
        teacher = {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}
        if not teacher:
            raise RuntimeError(f"{run} keeps no previous-stage model (its method does not distil)")
        model = build_model(cfg.model.name, cfg.num_classes, in_channels=1, image_size=28)
        model.load_state_dict(teacher)
        model.eval()
        y = torch.tensor(load_dataset(cfg.data, cfg.run.seed).test_y, dtype=torch.long)
        for domain, x in zip(cfg.stream.domains.split(","), test_domains(cfg)):
            with torch.no_grad():
                logits = model(normalize(nchw_tensor(x)))
            p1, pt = logits.softmax(1), (logits / args.temperature).softmax(1)
            pred = p1.argmax(1)
            entropy = -(pt * pt.clamp_min(1e-12).log()).sum(1).mean()
            top = np.bincount(pred.numpy(), minlength=cfg.num_classes).max() / len(pred)
            print(f"| {run} | {domain} | {100 * float((pred == y).float().mean()):.1f} | "
                  f"{float(p1.max(1).values.mean()):.2f} | {float(pt.max(1).values.mean()):.2f} | "
                  f"{float(entropy):.2f} | {top:.2f} |")


if __name__ == "__main__":
    try:
        main()
    except (ConfigError, OSError, RuntimeError) as e:  # a run dir that is not a stream run's
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        sys.exit(2)
