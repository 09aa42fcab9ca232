"""The docs state what is true now: every path docs/architecture.md cites exists, every
relative link in the README and docs/ resolves, and no manual page or config help string
tells history (a former default, an issue number)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fedssl.config.schema import keys
from tests.conftest import ROOT

MANUAL = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]  # docs/results/ keeps provenance
ALL_MD = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

# history words: a former default, an issue number, what a key "used to" do
HISTORY = re.compile(r"issue [0-9]|#[0-9]{2}\b|\bformerly\b|\bformer\b|(?<!not )used to\b|no longer|previously"
                     r"|was changed|since v?[0-9]|\(the default since\)|\bnow the default\b"
                     r"|until (?:rerun|fixed)|was fixed|\bthe issue\b|\bissue's\b", re.IGNORECASE)
# in docstrings "no longer" / "yet" describe a running system; history there is the
# issue tracker and former values
DOC_HISTORY = re.compile(r"issue [0-9]|#[0-9]{2}\b|\bthe issue\b|\bissue's\b|\bformerly\b|\bformer default"
                         r"|until (?:rerun|fixed)|was fixed|previously", re.IGNORECASE)
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
BACKTICK = re.compile(r"`([^`\n]+)`")
# a repository path: dir/…/name or a top-level file name with an extension
PATH = re.compile(r"^[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)*/?$")
FILE_EXT = (".py", ".toml", ".md", ".ipynb", ".cfg", ".txt", ".sh", ".png")


def _prose(path: Path) -> str:
    return FENCE.sub("", path.read_text())


def cited_paths(text: str) -> list[str]:
    """Backticked tokens of ``text`` that name a repository path (``server/loop.py``,
    ``fedssl/config/``, ``pyproject.toml``) or a fedssl module (``fedssl.strategies``)."""
    out = []
    for tok in BACKTICK.findall(text):
        if tok.startswith("fedssl.") and re.fullmatch(r"[a-z_.]+", tok):
            out.append(tok)
        elif PATH.match(tok) and ("/" in tok or tok.endswith(FILE_EXT)) and "." + tok.rpartition(".")[2] != tok:
            out.append(tok)
    return out


def _module_exists(dotted: str) -> bool:
    """Some prefix of ``fedssl.a.b`` of two or more parts is a module file or package."""
    parts = dotted.split(".")
    for n in range(len(parts), 1, -1):
        base = ROOT.joinpath(*parts[:n])
        if base.with_suffix(".py").is_file() or (base / "__init__.py").is_file():
            return True
    return False


def test_architecture_cites_only_paths_that_exist():
    text = (ROOT / "docs" / "architecture.md").read_text()
    cited = cited_paths(text)
    assert len(cited) >= 30, f"only {len(cited)} paths found: the extraction is broken"
    missing = [c for c in cited if not (_module_exists(c) if c.startswith("fedssl.") else (ROOT / c).exists())]
    assert not missing, f"docs/architecture.md cites paths that do not exist: {missing}"


def test_cited_path_extraction():
    text = "see `server/loop.py`, `fedssl/config/`, `pyproject.toml`, `fedssl.strategies`, " \
           "`fedssl run`, `module:Class`, `file.py:name`, `.py`, `runs/x y`"
    assert cited_paths(text) == ["server/loop.py", "fedssl/config/", "pyproject.toml", "fedssl.strategies"]
    assert not _module_exists("fedssl.no_such_module")


@pytest.mark.parametrize("path", MANUAL, ids=lambda p: str(p.relative_to(ROOT)))
def test_manual_pages_tell_no_history(path):
    hits = [line.strip() for line in path.read_text().splitlines() if HISTORY.search(line)]
    assert not hits, f"{path.relative_to(ROOT)} tells history (keep it in git or docs/results/): {hits[:3]}"


def test_config_help_strings_tell_no_history():
    hits = [f"{k.name}: {k.help}" for k in keys().values() if HISTORY.search(k.help)]
    assert len(keys()) > 50
    assert not hits, f"help strings tell history: {hits}"


def test_docstrings_tell_no_history():
    import ast

    hits = []
    for package in ("fedssl", "server", "client", "strategies"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node) or ""
                    hits += [f"{path.relative_to(ROOT)}: {ln.strip()}" for ln in doc.splitlines()
                             if DOC_HISTORY.search(ln)]
    assert not hits, hits[:5]


def test_history_pattern_catches_history():
    for line in ("kmeans (former)", "before issue 16's grid", "(the default since)", "see #16",
                 "it used to sleep", "formerly 2", "since v1.2", "no longer read", "listed until rerun",
                 "the issue asks for it", "the bug was fixed"):
        assert HISTORY.search(line), line
    assert not HISTORY.search("since the server holds no labels, 20 clients train")
    assert not HISTORY.search("4 held-out splits not used to choose the guard")
    for line in ("see issue 12", "the issue's grid", "the former default 0.5"):
        assert DOC_HISTORY.search(line), line


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of ``path``."""
    out = set()
    for line in _prose(path).splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", title)))
    return out


def test_relative_links_resolve():
    broken, count = [], 0
    for md in ALL_MD:
        for target in LINK.findall(_prose(md)):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            count += 1
            file, _, anchor = target.partition("#")
            dest = (md.parent / file).resolve() if file else md
            if not dest.exists():
                broken.append(f"{md.relative_to(ROOT)}: {target}")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{md.relative_to(ROOT)}: {target} (no such heading)")
    assert count >= 20, f"only {count} links found: the extraction is broken"
    assert not broken, f"broken links: {broken}"
