"""Where a labels-at-server run's confident pseudo-label errors sit, and whether a
second, nearest-prototype opinion would catch them.

Reads a finished run's final global model (``checkpoint.safetensors``, written when
``run.checkpoint_every`` > 0) and pseudo-labels every client sample with it, as
SemiFL's clients do at the start of a round (one forward, the un-augmented image).
Per threshold tau it prints the confident share and the pseudo-labels' accuracy, the
most frequent wrong (true -> pseudo) pairs, and, for two agreement filters, the share
of the wrong and of the right confident labels each would drop:

- ``server prototypes``: keep a pseudo-label only where the sample's normalised feature
  is nearest to that class's mean feature over the server's labeled set;
- ``self prototypes``: the same with the class means of the confident samples
  themselves (no label used).

A filter worth building drops most of the wrong labels and few of the right ones. If
both drop few wrong ones, the errors are in the features, not only in the head: the
model sees those samples as the class it names.

    python benchmarks/semifl_pl_errors.py runs/semifl_mix_partners/runs/*seed=0 [RUN ...] [--tau 0.95,0.99]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from fedssl.config import ConfigError, resolve
from fedssl.data.augment import normalize
from fedssl.data.tensors import nchw_tensor
from fedssl.models import build_model
from server.loop import server_index


def final_model(run: Path, cfg) -> torch.nn.Module:
    path = run / "checkpoint.safetensors"
    if not path.exists():
        raise RuntimeError(f"{run} has no checkpoint.safetensors (run it with run.checkpoint_every > 0)")
    arrays = {k[len("/arrays/"):]: v for k, v in load_file(path).items() if k.startswith("/arrays/")}
    model = build_model(cfg.model.name, cfg.num_classes, in_channels=1, image_size=28)
    model.load_state_dict(arrays)
    return model.eval()


def class_means(f: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """Normalised mean feature per class over ``mask`` (zero rows for a class without samples)."""
    rows = [f[mask & (y == c)].mean(0) if bool((mask & (y == c)).any()) else torch.zeros(f.shape[1])
            for c in range(k)]
    return F.normalize(torch.stack(rows), dim=1)


def report(run: Path, taus: list[float]) -> None:
    cfg = resolve(str(run / "config.toml"))
    if cfg.data.server_labels_per_class <= 0:
        raise RuntimeError(f"{run} is not a labels-at-server run (data.server_labels_per_class = 0)")
    splits, server = server_index(cfg)
    model, k = final_model(run, cfg), cfg.num_classes
    y_all = np.asarray(splits.train_y).astype(np.int64)
    pool = np.setdiff1d(np.arange(len(y_all)), server)  # every client sample
    with torch.no_grad():
        def feats(idx: np.ndarray) -> torch.Tensor:
            x = normalize(nchw_tensor(splits.train_x[idx]))
            return torch.cat([model.features(x[i:i + 2048]) for i in range(0, len(x), 2048)])
        f, f_s = feats(pool), feats(server)
        conf, y_hat = model.head(f).softmax(1).max(1)
    y, y_s = torch.from_numpy(y_all[pool]), torch.from_numpy(y_all[server])
    f, f_s = F.normalize(f, dim=1), F.normalize(f_s, dim=1)
    near_server = (f @ class_means(f_s, y_s, torch.ones_like(y_s, dtype=torch.bool), k).T).argmax(1)
    right = y_hat == y
    for tau in taus:
        m = conf >= tau
        wrong = m & ~right
        near_self = (f @ class_means(f, y_hat, m, k).T).argmax(1)
        pairs = Counter(zip(y[wrong].tolist(), y_hat[wrong].tolist())).most_common(4)
        top = ", ".join(f"{a}->{b} {100 * n / max(int(wrong.sum()), 1):.0f} %" for (a, b), n in pairs)
        print(f"| {run.name} | {tau} | {100 * float(m.float().mean()):.1f} | "
              f"{100 * float(right[m].float().mean()):.1f} | {top} |", end="")
        for near in (near_server, near_self):
            drop = m & (near != y_hat)
            print(f" {100 * float((drop & ~right).sum()) / max(int(wrong.sum()), 1):.1f} / "
                  f"{100 * float((drop & right).sum()) / max(int((m & right).sum()), 1):.1f} |", end="")
        print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--tau", default="0.95,0.99", help="comma-separated thresholds")
    args = ap.parse_args()
    try:
        taus = [float(t) for t in args.tau.split(",")]
    except ValueError:
        raise ValueError(f"--tau must be comma-separated numbers, got {args.tau!r}") from None
    torch.set_num_threads(1)
    print("| run | tau | confident % | pseudo-label acc % | top wrong pairs (true->pseudo, share of errors) "
          "| server prototypes: wrong / right dropped % | self prototypes: wrong / right dropped % |")
    print("|---|---|---|---|---|---|---|")
    for run in args.runs:
        report(run, taus)


if __name__ == "__main__":
    try:
        main()
    except (ConfigError, OSError, RuntimeError, ValueError) as e:  # not a finished labels-at-server run
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        sys.exit(2)
