"""The per-client label distribution of a partition: counts, a CSV, and a figure.

Any partition draws the same way, fedssl's own or a Flower Datasets partitioner's:
one horizontal bar per client, split by class, hatched where the samples are labeled.
``fedssl data plot`` draws it from a config; ``fedssl run`` writes ``partition.csv``
into the run directory, and ``fedssl report`` draws it into the run's report.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any

import numpy as np

from fedssl.config import Config, ConfigError
from fedssl.console import add_config_flags, add_output_flags, config_from_flags
from fedssl.data.partition import Partition

PARTITION_CSV = "partition.csv"


def label_counts(part: Partition, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``(clients, classes, 2)`` sample counts: ``[..., 0]`` labeled, ``[..., 1]`` unlabeled."""
    labels = np.asarray(labels).astype(np.int64, copy=False)
    out = np.zeros((len(part.shards), num_classes, 2), dtype=np.int64)
    for c, shard in enumerate(part.shards):
        out[c, :, 0] = np.bincount(labels[shard.labeled], minlength=num_classes)
        out[c, :, 1] = np.bincount(labels[shard.unlabeled], minlength=num_classes)
    return out


def counts_csv(counts: np.ndarray) -> str:
    buf = io.StringIO()
    buf.write("client,class,labeled,unlabeled\n")
    for c, k in zip(*np.nonzero(counts.sum(axis=2))):
        buf.write(f"{c},{k},{counts[c, k, 0]},{counts[c, k, 1]}\n")
    return buf.getvalue()


def read_counts_csv(path: Path) -> np.ndarray:
    import pandas as pd

    df = pd.read_csv(path)
    out = np.zeros((int(df["client"].max()) + 1, int(df["class"].max()) + 1, 2), dtype=np.int64)
    out[df["client"], df["class"], 0] = df["labeled"]
    out[df["client"], df["class"], 1] = df["unlabeled"]
    return out


def config_counts(cfg: Config) -> np.ndarray:
    """The counts of ``cfg``'s partition, split exactly as ``fedssl run`` splits it."""
    from fedssl.data.partition import cached_partition
    from fedssl.data.sources import load_dataset

    data = load_dataset(cfg.data, cfg.run.seed)
    return label_counts(cached_partition(cfg.data, cfg.run.seed), data.train_y, data.num_classes)


def label_distribution_figure(counts: np.ndarray, title: str = ""):
    """Stacked bars, one per client: samples per class (labeled part hatched)."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    clients, k, _ = counts.shape
    cmap = colormaps["tab10" if k <= 10 else "tab20"]
    fig = Figure(figsize=(8, max(2.5, min(16, 0.25 * clients + 1.2))), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    y, left = np.arange(clients), np.zeros(clients)
    for cls in range(k):
        color = cmap(cls % cmap.N)
        lab, unl = counts[:, cls, 0], counts[:, cls, 1]
        ax.barh(y, lab, left=left, color=color, hatch="///", edgecolor="white", linewidth=0)
        ax.barh(y, unl, left=left + lab, color=color, label=str(cls), linewidth=0)
        left += lab + unl
    ax.set_yticks(y if clients <= 40 else y[:: max(1, clients // 20)])
    ax.invert_yaxis()
    ax.set_xlabel("samples (hatched: labeled)")
    ax.set_ylabel("client")
    ax.set_title(title or f"label distribution over {clients} clients")
    ax.legend(title="class", loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
    return fig


def cmd_plot(args: argparse.Namespace) -> int:
    from fedssl.runlog import write_atomic

    cfg = config_from_flags(args)
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out {out}: expected a .png file name")
    if not args.overwrite and (out.exists() or out.with_suffix(".csv").exists()):
        raise ConfigError(f"--out {out} (or its .csv) exists; pass --overwrite to replace it")
    counts = config_counts(cfg)
    d = cfg.data
    title = f"{d.dataset}, partition={d.partition} ({d.num_clients} clients, seed {cfg.run.seed})"
    out.parent.mkdir(parents=True, exist_ok=True)
    label_distribution_figure(counts, title).savefig(out, format="png", metadata={"Software": None})
    write_atomic(out.with_suffix(".csv"), counts_csv(counts))
    if not args.quiet:
        print(f"wrote {out} and {out.with_suffix('.csv')}")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("plot", help="draw the per-client label distribution of the config's partition",
                       description="Partition the config's dataset exactly as `fedssl run` does and "
                                   "draw each client's samples per class (labeled part hatched) to "
                                   "FILE.png, with the counts in FILE.csv.")
    p.add_argument("--out", required=True, metavar="FILE.png", help="the figure (counts go to FILE.csv)")
    add_config_flags(p)
    add_output_flags(p, "replace FILE.png and FILE.csv if they exist")
    p.set_defaults(func=cmd_plot)
