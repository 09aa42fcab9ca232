"""What produced a run: fedssl's, Flower's, torch's and Ray's versions, and the git
commit of fedssl's source tree when it is a git checkout (summary.json records them)."""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


# The one place the version is written is pyproject.toml (Flower's app config needs it
# there); a source tree that was never installed has none.
__version__ = _version("fedssl") or "0+unknown"


def git_commit(path: Path | None = None) -> str | None:
    """HEAD of the git work tree holding ``path`` (fedssl's source), with ``+dirty`` when
    tracked files differ from it; None outside a work tree or without git."""
    where = str(path or Path(__file__).resolve().parent)
    try:
        head = subprocess.run(["git", "-C", where, "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", where, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")


def provenance() -> dict[str, Any]:
    """``{"versions": {fedssl, flwr, torch, ray}, "git_commit": ...}`` for summary.json."""
    return {"versions": {"fedssl": __version__, "flwr": _version("flwr"), "torch": _version("torch"),
                         "ray": _version("ray")},
            "git_commit": git_commit()}
