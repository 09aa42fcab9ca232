"""The ``fedssl`` command: run | config | bench | report | deploy | data.

Bad input exits with status 2 and one line ``error: ...`` on stderr, no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path
from typing import NoReturn

from fedssl import __version__
from fedssl.config import ConfigError, parse_set, resolve
from fedssl.console import add_config_flags, config_from_flags, print_summary

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


def _setup_logging(quiet: bool) -> None:
    from rich.console import Console
    from rich.logging import RichHandler

    log = logging.getLogger("fedssl")
    if not log.handlers:  # logs on stderr; stdout keeps only the results (tables, JSON)
        handler = RichHandler(console=Console(stderr=True), show_path=False, show_time=False, markup=False)
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


def cmd_config(args: argparse.Namespace) -> int:
    from fedssl.config.render import commented_toml

    print(commented_toml(config_from_flags(args)), end="")
    return 0


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """The subcommands that live with their subject, each added by its ``add_parser``.
    Imported here, not at the top, so ``fedssl run`` does not load them; a module that
    fails to import is a broken install and its ImportError surfaces (argparse would
    otherwise call the command an invalid choice)."""
    from fedssl.data.export import add_parser as add_data
    from fedssl.deploy.cli import add_parser as add_deploy
    from fedssl.report.cli import add_parser as add_report

    # bench's warm worker runs this module's main() in forked processes, so a direct
    # import here would close a cycle fedssl.cli -> bench -> fedssl.cli
    bench = importlib.import_module("fedssl.bench.cli")
    for add in (bench.add_parser, add_report, add_deploy, add_data):
        add(sub)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fedssl", description="Federated semi-supervised learning on Flower + Ray.")
    p.add_argument("--version", action="version", version=f"fedssl {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser("run", help="run one experiment as a Flower simulation (Ray backend)")
    add_config_flags(r)
    r.add_argument("--out", help="output directory (sets run.out_dir)")
    r.add_argument("--resume", metavar="DIR", help="continue an interrupted run from its last checkpoint")
    r.add_argument("--overwrite", action="store_true", help="replace an existing run in the output directory")
    r.add_argument("--quiet", action="store_true", help="only warnings and the final table")
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("config", help="print the resolved config as TOML, one help line per key")
    add_config_flags(c, config_help="TOML config file (default: the built-in defaults)")
    c.set_defaults(func=cmd_config)

    add_subcommands(sub)
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
