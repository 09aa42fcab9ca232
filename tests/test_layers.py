"""Static checks in the suite: the import layers (import-linter contracts in
pyproject.toml), import cycles closed by a module loaded by its name (which
import-linter cannot see), ruff, and mypy on the core (fedssl/)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT

BIN = Path(sys.executable).parent


def run(*cmd: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def test_import_layer_contracts_are_kept():
    proc = run(str(BIN / "lint-imports"))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout and "KEPT" in proc.stdout


def test_ruff_is_clean():
    proc = run(str(BIN / "ruff"), "check", ".")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_mypy_on_the_core():
    proc = run(sys.executable, "-m", "mypy")  # files and settings: [tool.mypy] in pyproject.toml
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "Success" in proc.stdout


def test_the_commands_load_no_app_and_no_flower_runtime_until_a_run_starts():
    """Importing the commands and ``run_experiment`` (and building the parser, as
    ``fedssl config`` and ``--help`` do) loads none of the apps, Flower's
    ServerApp/ClientApp/simulation runtime, torch or safetensors: they are loaded when a
    run starts (the SuperNode image, which runs ``fedssl node``, carries neither of the last two)."""
    code = ("import sys, fedssl.simulation, fedssl.protocol, fedssl.seeding, fedssl.sampling, fedssl.cli;"
            "fedssl.cli.build_parser();"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('server', 'client', 'strategies', 'torch', 'safetensors')"
            " or m.startswith(('fedssl.server', 'fedssl.client', 'fedssl.strategies', 'flwr.serverapp',"
            " 'flwr.clientapp', 'flwr.simulation'))];"
            "print(bad); sys.exit(1 if bad else 0)")
    proc = run(sys.executable, "-c", code, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- cycles through modules loaded by name ---------------------------------------------
#: the apps' folders: fedssl/server etc. are links to them (imported as fedssl.server ...)
APPS = ("server", "client", "strategies")


def production_modules(root: Path = ROOT) -> Iterator[tuple[str, Path]]:
    """(module name, file) of every module of fedssl, the apps included."""
    files = [(p, p.relative_to(root)) for p in sorted((root / "fedssl").rglob("*.py"))]
    files += [(p, Path("fedssl") / p.relative_to(root)) for app in APPS for p in sorted((root / app).rglob("*.py"))]
    for path, rel in files:
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        yield ".".join(parts), path


def by_name_edges(root: Path = ROOT) -> set[tuple[str, str]]:
    """(importer, imported) for every string in fedssl's code that names one of its
    modules: ``importlib.import_module("fedssl.x")``, ``[python, "-m", "fedssl.x"]``, a
    list of modules to preload. An app's folder name (``"server.loop"``) counts as the
    module it is (``fedssl.server.loop``). A package that loads its own submodules
    (lazy exports) closes no cycle: importing a submodule runs its package first anyway."""
    modules = dict(production_modules(root))
    edges = set()
    for importer, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
                continue
            name = f"fedssl.{node.value}" if node.value.startswith(tuple(f"{a}." for a in APPS)) else node.value
            if name in modules and name != "fedssl" and not (
                    name == importer or name.startswith(importer + ".") and path.name == "__init__.py"):
                edges.add((importer, name))
    return edges


def name_load_cycles(root: Path = ROOT) -> list[str]:
    """Each by-name edge that closes a cycle, with the chain of imports back."""
    import grimp

    # an import under TYPE_CHECKING never runs, so it closes no cycle at run time
    graph = grimp.build_graph("fedssl", exclude_type_checking_imports=True)
    edges = by_name_edges(root)
    for a, b in edges:
        graph.add_import(importer=a, imported=b)
    found = []
    for a, b in sorted(edges):
        chain = graph.find_shortest_chain(importer=b, imported=a)
        if chain:
            found.append(f"{a} loads {b} by name, and {' -> '.join(chain)}")
    return found


def test_modules_loaded_by_name_close_no_import_cycle():
    edges = by_name_edges()
    # the loads this test exists for are seen (the bench's worker process, its preloads)
    assert ("fedssl.bench.pool", "fedssl.bench.worker") in edges
    assert ("fedssl.bench.runner", "fedssl.run_command") in edges
    assert ("fedssl.bench.worker", "fedssl.client.app") in edges
    assert name_load_cycles() == []


def test_a_by_name_load_that_closes_a_cycle_is_found(tmp_path, monkeypatch):
    """The check fails on a cycle: here fedssl.report.model loading the bench runner,
    which imports the report."""
    monkeypatch.setattr(sys.modules[__name__], "by_name_edges",
                        lambda root=ROOT: {("fedssl.report.model", "fedssl.bench.runner")})
    (cycle,) = name_load_cycles()
    assert cycle.startswith("fedssl.report.model loads fedssl.bench.runner by name, and fedssl.bench.runner")


@pytest.mark.parametrize("source", ['importlib.import_module("fedssl.cli")', '[sys.executable, "-m", "fedssl.cli"]',
                                    'PRELOAD = ("torch", "fedssl.cli")'])
def test_a_name_in_the_code_is_an_edge(tmp_path, source):
    """Every way of naming a module in a string is an edge; parent-to-child lazy loads
    and a module naming itself are not."""
    for folder in ("fedssl/bench", *APPS):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "fedssl" / "__init__.py").write_text('def f(): return importlib.import_module("fedssl.cli")\n')
    (tmp_path / "fedssl" / "cli.py").write_text('"fedssl.cli"\n')
    (tmp_path / "fedssl" / "bench" / "__init__.py").write_text("")
    (tmp_path / "fedssl" / "bench" / "worker.py").write_text(source + "\n")
    assert by_name_edges(tmp_path) == {("fedssl.bench.worker", "fedssl.cli")}
