"""What the command-line entry points share: the parser whose errors are one line and
exit 2, the logging setup, the error handling of a command, the ``--config`` / ``--set``
flags, the config they resolve to, and the final summary table of a run.

It sits above the config and report packages and below the commands that use it
(``fedssl.cli``, ``fedssl.run_command``, ``fedssl.deploy``), so none of them imports
another to reach it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, NoReturn

from fedssl.config import Config, ConfigError, parse_set, resolve

EXIT_BAD_INPUT = 2

CONFIG_HELP = "TOML config file (default: the built-in default experiment)"
SET_HELP = "override a config key"
METAVAR_SET = "SECTION.KEY=VALUE"


class CommandParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line ``error: ...`` and exit status 2."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


def setup_logging(quiet: bool) -> None:
    """fedssl's log on stderr (stdout keeps only the results: tables, JSON)."""
    from rich.console import Console
    from rich.logging import RichHandler

    log = logging.getLogger("fedssl")
    if not log.handlers:
        handler = RichHandler(console=Console(stderr=True), show_path=False, show_time=False, markup=False)
        log.addHandler(handler)
    log.setLevel(logging.WARNING if quiet else logging.INFO)


def run_command(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Parse ``argv`` and run the command it names (``args.func``): bad input is one line
    ``error: ...`` and exit status 2, Ctrl-C exit status 130."""
    args = parser.parse_args(argv)
    setup_logging(getattr(args, "quiet", False))
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("error: interrupted; resume with `fedssl run --resume DIR`", file=sys.stderr)
        return 130


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

    from fedssl.report.model import FINAL, ORCA_PROTOCOL

    final = summary.get("final", {})
    cfg = summary.get("config", {})
    table = Table(title=f"{cfg.get('server', {}).get('strategy')} + "
                        f"{cfg.get('client', {}).get('algorithm')} after round {final.get('round')}")
    # open world: all-class accuracy and the all-sample matching's columns lead, the ORCA
    # protocol's follow; a closed-world run shows no unseen column
    cols = [c for c in FINAL if c in ("acc_all", "acc_seen", "loss") or final.get(c) is not None]
    for col in cols:
        table.add_column(col.removeprefix("acc_").replace("_", " ") + (" ¹" if col in ORCA_PROTOCOL else ""),
                         justify="right")
    if any(c in ORCA_PROTOCOL for c in cols):
        table.caption = "¹ ORCA protocol: matched on the unseen samples alone (credits absorption)"
    table.add_row(*[("-" if final.get(c) is None else f"{final[c]:.0f}" if c == "discovered"
                     else f"{final[c]:.4f}") for c in cols])
    console = Console()
    console.print(table)
    console.print(f"status: {summary.get('status')}   elapsed: {summary.get('elapsed_s', 0):.1f} s   "
                  f"files: {out_dir}/metrics.csv, summary.json, config.toml")
