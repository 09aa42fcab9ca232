"""The ``fedssl`` command: run | config | bench | report | deploy | data.

Bad input exits with status 2 and one line ``error: ...`` on stderr, no traceback.
"""

from __future__ import annotations

import argparse
import sys

from fedssl.console import EXIT_BAD_INPUT, CommandParser, add_config_flags, config_from_flags, run_command
from fedssl.versions import __version__

__all__ = ["EXIT_BAD_INPUT", "build_parser", "main"]


def cmd_config(args: argparse.Namespace) -> int:
    from fedssl.config.render import commented_toml

    print(commented_toml(config_from_flags(args)), end="")
    return 0


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """The subcommands that live with their subject, each added by its ``add_parser``.
    Imported when the parser is built, not with this module, so that importing
    ``fedssl.cli`` loads no Flower, Ray or torch; a module that fails to import is a
    broken install and its ImportError surfaces (argparse would otherwise call the
    command an invalid choice)."""
    from fedssl.bench.cli import add_parser as add_bench
    from fedssl.data.export import add_parser as add_data
    from fedssl.deploy.cli import add_parser as add_deploy
    from fedssl.report.cli import add_parser as add_report
    from fedssl.run_command import add_parser as add_run

    add_run(sub)
    c = sub.add_parser("config", help="print the resolved config as TOML, one help line per key")
    add_config_flags(c, config_help="TOML config file (default: the built-in defaults)")
    c.set_defaults(func=cmd_config)
    for add in (add_bench, add_report, add_deploy, add_data):
        add(sub)


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="fedssl", description="Federated semi-supervised learning on Flower + Ray.")
    p.add_argument("--version", action="version", version=f"fedssl {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=CommandParser)
    add_subcommands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
