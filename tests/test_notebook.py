"""examples/quickstart.ipynb: kept in sync with its jupytext text, and executed by a real
Jupyter kernel (two short real runs through ``fedssl.run``, an MLflow look-up)."""

from __future__ import annotations

import re

import jupytext
import nbformat
from nbclient import NotebookClient

from tests.conftest import ROOT

NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"
TEXT = ROOT / "examples" / "quickstart.py"


def _cells(nb) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def test_the_notebook_and_its_text_form_hold_the_same_cells():
    assert _cells(nbformat.read(NOTEBOOK, as_version=4)) == _cells(jupytext.read(TEXT)), \
        "run: jupytext --sync examples/quickstart.py"
    assert not any(c.get("outputs") for c in nbformat.read(NOTEBOOK, as_version=4).cells), "commit it without outputs"


def run_notebook(path, cwd):
    """Execute the notebook at ``path`` in a real Jupyter kernel started in ``cwd``."""
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=1500, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def test_the_quickstart_notebook_runs_and_shows_what_ssl_gains(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the notebook's local default, in tmp_path
    nb = run_notebook(NOTEBOOK, tmp_path)
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    m = re.search(r"semifl vs supervised ([+-]\d+\.\d) points of acc_all after round (\d+)", text)
    assert m, text[-3000:]
    assert float(m.group(1)) > 0, m.group(0)
    rounds = list(range(1, int(m.group(2)) + 1))
    assert text.count(f"rounds logged {rounds}") == 2, text[-3000:]  # both runs, every round, in MLflow
    assert (tmp_path / "runs" / "notebook" / "semifl" / "report.html").exists()
    assert any(o.get("data", {}).get("image/png") for c in nb.cells for o in c.get("outputs", [])), "no curve plot"
