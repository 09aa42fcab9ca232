"""What the command-line entry points share: the ``--config`` / ``--set`` flags, the
config they resolve to, and the final summary table of a run.

Below every subcommand module and above the config package, so ``fedssl.cli`` and the
subcommands (``fedssl deploy``, ``fedssl data``, ...) import it without a cycle.
"""

from __future__ import annotations

import argparse
from typing import Any

from fedssl.config import Config, parse_set, resolve

CONFIG_HELP = "TOML config file (default: the built-in default experiment)"
SET_HELP = "override a config key"
METAVAR_SET = "SECTION.KEY=VALUE"
SUMMARY_COLUMNS = ("acc_all", "acc_seen", "acc_unseen", "acc_local_unseen", "acc_global_unseen", "loss")


def add_config_flags(parser: argparse.ArgumentParser, config_help: str = CONFIG_HELP,
                     set_help: str | None = SET_HELP) -> None:
    """``--config FILE`` and the repeatable ``--set SECTION.KEY=VALUE``."""
    parser.add_argument("--config", help=config_help)
    parser.add_argument("--set", action="append", metavar=METAVAR_SET, help=set_help)


def config_from_flags(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> Config:
    """The config that ``--config`` and ``--set`` name, with ``extra`` dotted keys set last
    (a command's own flags, e.g. ``--clients``); bad input raises ConfigError."""
    overrides = parse_set(args.set or [])
    overrides.update(extra or {})
    return resolve(args.config, overrides)


def print_summary(summary: dict[str, Any], out_dir: str) -> None:
    """The final accuracies of a run as a table, then its status and files."""
    from rich.console import Console
    from rich.table import Table

    final = summary.get("final", {})
    cfg = summary.get("config", {})
    table = Table(title=f"{cfg.get('server', {}).get('strategy')} + "
                        f"{cfg.get('client', {}).get('algorithm')} after round {final.get('round')}")
    for col in SUMMARY_COLUMNS:
        table.add_column(col, justify="right")
    table.add_row(*[("-" if final.get(c) is None else f"{final[c]:.4f}") for c in SUMMARY_COLUMNS])
    console = Console()
    console.print(table)
    console.print(f"status: {summary.get('status')}   elapsed: {summary.get('elapsed_s', 0):.1f} s   "
                  f"files: {out_dir}/metrics.csv, summary.json, config.toml")
