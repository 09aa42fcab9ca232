"""``fedssl run``: one experiment from the command line.

``python -m fedssl.run_command ARGS`` is ``fedssl run ARGS``. The ``fedssl`` command
(:mod:`fedssl.cli`) adds this parser as its ``run`` subcommand, and ``fedssl bench``
runs every cell with :func:`main`, so neither imports the other.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedssl.config import ConfigError, parse_set, resolve
from fedssl.console import CommandParser, add_config_flags, add_output_flags, run_command
from fedssl.report.terminal import print_summary
from fedssl.simulation import run_experiment

HELP = "run one experiment as a Flower simulation (Ray backend)"


def add_flags(r: argparse.ArgumentParser) -> None:
    add_config_flags(r)
    r.add_argument("--out", help="output directory (sets run.out_dir)")
    r.add_argument("--resume", metavar="DIR", help="continue an interrupted run from its last checkpoint")
    add_output_flags(r, "replace an existing run in the output directory", "only warnings and the final table")
    r.set_defaults(func=cmd_run)


def add_parser(sub: argparse._SubParsersAction) -> None:
    add_flags(sub.add_parser("run", help=HELP))


def cmd_run(args: argparse.Namespace) -> int:
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


def main(argv: list[str] | None = None) -> int:
    """``fedssl run ARGV``: the exit status (2 on bad input)."""
    parser = CommandParser(prog="fedssl run", description=HELP)
    add_flags(parser)
    return run_command(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
