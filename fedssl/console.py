"""What the command-line entry points share: the parser whose errors are one line and
exit 2, the logging setup, the error handling of a command, the ``--config`` / ``--set``
flags and the config they resolve to. (A run's final table is
:func:`fedssl.report.terminal.print_summary`.)

It sits above the config package and below the commands that use it (``fedssl.cli``,
``fedssl.run_command``, ``fedssl.deploy``, ``fedssl data``), so none of them imports
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


def add_output_flags(parser: argparse.ArgumentParser, overwrite_help: str,
                     quiet_help: str = "print nothing on success") -> None:
    """``--overwrite`` (replace what the output already holds; without it a command
    refuses, exit 2) and ``--quiet``."""
    parser.add_argument("--overwrite", action="store_true", help=overwrite_help)
    parser.add_argument("--quiet", action="store_true", help=quiet_help)


def config_from_flags(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> Config:
    """The config that ``--config`` and ``--set`` name, with ``extra`` dotted keys set last
    (a command's own flags, e.g. ``--clients``); bad input raises ConfigError."""
    overrides = parse_set(args.set or [])
    overrides.update(extra or {})
    return resolve(args.config, overrides)
