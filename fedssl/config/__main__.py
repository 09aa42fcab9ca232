"""``python -m fedssl.config [--pyproject | --readme | --write [ROOT]]``.

Prints the generated ``[tool.flwr.app.config]`` table or README key table, or rewrites
both in place under ROOT (default: the current directory).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedssl.config import render


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fedssl.config", description=__doc__.splitlines()[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--pyproject", action="store_true", help="print [tool.flwr.app.config]")
    g.add_argument("--readme", action="store_true", help="print the README key table")
    g.add_argument("--write", nargs="?", const=".", metavar="ROOT",
                   help="regenerate pyproject.toml and README.md under ROOT in place")
    args = p.parse_args(argv)
    if args.pyproject:
        print(render.pyproject_table(), end="")
    elif args.readme:
        print(render.readme_table())
    else:
        for path in render.write(Path(args.write)):
            print(f"rewrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
