"""The version is written once, in pyproject.toml (Flower's app config requires it
there): fedssl.__version__ (from the installed metadata), `fedssl --version` and
summary.json read it."""

from __future__ import annotations

import re
import tomllib

import fedssl
from fedssl.versions import git_commit, provenance
from tests.conftest import ROOT, run_cli


def test_version_is_single_sourced():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["version"] == fedssl.__version__ and "dynamic" not in project
    assert not re.search(r"^__version__ = ['\"]", (ROOT / "fedssl" / "__init__.py").read_text(), re.M)
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"fedssl {fedssl.__version__}"
    assert f"## {fedssl.__version__}" in (ROOT / "CHANGELOG.md").read_text()


def test_provenance_names_the_versions_and_the_commit(tmp_path):
    p = provenance()
    assert p["versions"]["fedssl"] == fedssl.__version__ and p["versions"]["flwr"].startswith("1.42")
    assert p["versions"]["torch"] and p["versions"]["ray"]
    if (ROOT / ".git").exists():  # a checkout (or worktree): HEAD, +dirty when edited
        assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", p["git_commit"] or ""), p["git_commit"]
    assert git_commit(tmp_path) is None  # not a git work tree
