"""Do a client's labeled samples sit in the global centroids' slots as its unlabeled
samples of the same seen classes do? From a finished FedoSSL run's final checkpoint
(``run.checkpoint_every`` = its rounds): the final model and the centroids its server
would send next, every client's shard rebuilt from the config, and per seen class the
share of its labeled and of its unlabeled samples (true class, known in simulation)
whose top slot is an unseen one at the clients' pseudo-label confidence.

    python benchmarks/openworld_slots.py RUN_DIR

A guard that lets labeled samples stand for their class's unlabeled ones (the
``labeled`` guard tried in docs/results/openworld_all13.md) needs the two shares close.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fedssl.client.runtime import ClientRuntime
from fedssl.config import ConfigError, resolve
from fedssl.data.augment import normalize
from fedssl.models import build_model
from fedssl.runlog import load_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    args = ap.parse_args()
    try:
        cfg = resolve(str(args.run / "config.toml"))
        ckpt = load_checkpoint(args.run)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    # fedssl's loop checkpoints the inner Flower strategy's state under strategy.inner
    centroids = (((ckpt or {}).get("strategy") or {}).get("inner") or {}).get("global_centroids")
    if centroids is None:
        print(f"error: {args.run} has no checkpoint with global centroids (a FedoSSL run with "
              "run.checkpoint_every = its rounds)", file=sys.stderr)
        raise SystemExit(2)
    p = cfg.algo_params
    s, k = cfg.num_seen, cfg.num_classes
    rt = ClientRuntime(cfg, {})
    x0 = rt.shard(0).x_l
    model = build_model(cfg.model.name, k, in_channels=x0.shape[1], image_size=x0.shape[2],
                        cosine_head=cfg.algorithm_class.open_world)
    model.load_state_dict({n: torch.from_numpy(v) for n, v in ckpt["arrays"].items()})
    model.eval()
    c = F.normalize(torch.as_tensor(np.asarray(centroids), dtype=torch.float32), dim=1)

    def unseen_slot(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            z = F.normalize(model.features(normalize(x)), dim=1)
        conf, slot = torch.softmax(z @ c.T / p.cluster_temperature, dim=1).max(dim=1)
        return (conf >= p.threshold) & (slot >= s)

    counts = np.zeros((s, 4), dtype=np.int64)  # labeled n, in unseen slots; unlabeled n, in unseen slots
    for pid in range(cfg.data.num_clients):
        d = rt.shard(pid)
        moved_l, moved_u = unseen_slot(d.x_l), unseen_slot(d.x_u)
        for cls in range(s):
            ml, mu = d.y_l == cls, d.y_u == cls
            counts[cls] += [int(ml.sum()), int(moved_l[ml].sum()), int(mu.sum()), int(moved_u[mu].sum())]
    print(f"{args.run}: seen class | labeled: n, % confidently in an unseen slot | unlabeled (true class): n, %")
    for cls, (nl, ml, nu, mu) in enumerate(counts):
        print(f"  {cls} | {nl:5d} {100 * ml / max(nl, 1):5.1f} | {nu:5d} {100 * mu / max(nu, 1):5.1f}")
    nl, ml, nu, mu = counts.sum(0)
    print(f"  all | {nl:5d} {100 * ml / max(nl, 1):5.1f} | {nu:5d} {100 * mu / max(nu, 1):5.1f}")


if __name__ == "__main__":
    main()
