"""The ``fedssl`` command: run | config | bench | report | deploy | data.

Bad input exits with status 2 and one line ``error: ...`` on stderr, no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path
from typing import Any, NoReturn

from fedssl import __version__
from fedssl.config import ConfigError, parse_set, resolve

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


def _setup_logging(quiet: bool) -> None:
    from rich.logging import RichHandler

    log = logging.getLogger("fedssl")
    if not log.handlers:
        handler = RichHandler(show_path=False, show_time=False, markup=False)
        log.addHandler(handler)
    log.setLevel(logging.WARNING if quiet else logging.INFO)


def cmd_run(args: argparse.Namespace) -> int:
    from fedssl.simulation import run_experiment

    if args.resume:
        run_dir = Path(args.resume)
        if args.out and Path(args.out).resolve() != run_dir.resolve():
            raise ConfigError(f"--resume {run_dir} continues the run in that directory; "
                              f"--out {args.out} would be ignored (drop it)")
        saved = run_dir / "config.toml"
        if not saved.exists():
            raise ConfigError(f"--resume {run_dir}: no config.toml there (not a fedssl run directory)")
        cfg = resolve(str(saved))
        if args.config or args.set:
            sets = parse_set(args.set or [])
            wanted = resolve(args.config, sets) if args.config else resolve(None, sets, base=cfg.to_flat())
            a, b = cfg.to_flat(), wanted.to_flat()
            a.pop("run.out_dir"), b.pop("run.out_dir")
            diff = [k for k in a if a[k] != b[k]]
            if diff:
                raise ConfigError(f"--resume {run_dir}: the directory belongs to a different config "
                                  f"({diff[0]}={a[diff[0]]!r} there, {b[diff[0]]!r} asked)")
        cfg = cfg.replace(**{"run.out_dir": str(run_dir.resolve())})
        summary = run_experiment(cfg, resume=True, quiet=args.quiet)
    else:
        overrides = parse_set(args.set or [])
        if args.out:
            overrides["run.out_dir"] = args.out
        from fedssl.runlog import prepare_fresh

        cfg = prepare_fresh(resolve(args.config, overrides), args.overwrite)
        summary = run_experiment(cfg, quiet=args.quiet)
    print_summary(summary, cfg.run.out_dir)
    return 0


def print_summary(summary: dict[str, Any], out_dir: str) -> None:
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


def cmd_config(args: argparse.Namespace) -> int:
    from fedssl.config.render import commented_toml

    print(commented_toml(resolve(args.config, parse_set(args.set or []))), end="")
    return 0


# Modules that add their own subcommand through ``add_parser(subparsers)``.
SUBCOMMAND_MODULES = ("fedssl.bench.cli", "fedssl.report.cli", "fedssl.deploy.cli", "fedssl.data.export")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fedssl", description="Federated semi-supervised learning on Flower + Ray.")
    p.add_argument("--version", action="version", version=f"fedssl {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser("run", help="run one experiment as a Flower simulation (Ray backend)")
    r.add_argument("--config", help="TOML config file (default: the built-in default experiment)")
    r.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config key")
    r.add_argument("--out", help="output directory (sets run.out_dir)")
    r.add_argument("--resume", metavar="DIR", help="continue an interrupted run from its last checkpoint")
    r.add_argument("--overwrite", action="store_true", help="replace an existing run in the output directory")
    r.add_argument("--quiet", action="store_true", help="only warnings and the final table")
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("config", help="print the resolved config as TOML, one help line per key")
    c.add_argument("--config", help="TOML config file (default: the built-in defaults)")
    c.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config key")
    c.set_defaults(func=cmd_config)

    # A subcommand module that fails to import is a broken install: let the ImportError
    # surface instead of hiding the command (argparse would call it an invalid choice).
    for module in SUBCOMMAND_MODULES:
        importlib.import_module(module).add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(getattr(args, "quiet", False))
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("error: interrupted; resume with `fedssl run --resume DIR`", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
