"""``fedssl report DIR``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fedssl.report.render import render


def cmd_report(args: argparse.Namespace) -> int:
    kind, files = render(Path(args.dir))
    if not getattr(args, "quiet", False):
        print(f"{kind} report: " + ", ".join(str(p) for p in files.values()))
    return 0


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("report", help="(re)render tables and plots of a run or bench directory")
    p.add_argument("dir", metavar="DIR", help="a bench directory (fedssl bench --out) or a run directory")
    p.add_argument("--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(func=cmd_report)
