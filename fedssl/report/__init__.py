"""``fedssl report DIR``: tables and plots of a bench directory or of a single run.

Modules: :mod:`~fedssl.report.model` (cells and the results table, read from disk),
:mod:`~fedssl.report.stats` (mean ± std per configuration), :mod:`~fedssl.report.markdown`,
:mod:`~fedssl.report.plots`, :mod:`~fedssl.report.html`, :mod:`~fedssl.report.render`.

Everything here is re-rendered from files on disk (never by retraining):

* a **bench directory** (written by ``fedssl bench``) holds ``grid.json`` (the cells and
  the keys they vary), ``runs/<cell>/`` (each cell's ``metrics.csv`` / ``summary.json``)
  and ``cells/<cell>.json`` (the bench's record of a failed or interrupted cell). From
  them this module writes ``results.csv`` (one row per cell), ``summary.md`` (mean ± std
  over seeds per configuration, best mean per column in bold), ``plots/*.png`` and
  ``report.html`` (one self-contained file: the PNGs are embedded as ``data:`` URIs);
* a **run directory** (one holding ``metrics.csv``) gets a small ``report.html`` and
  ``plots/`` (accuracy/loss curves and per-class accuracy bars).

The output is a pure function of those files, so ``fedssl report DIR`` reproduces the
``summary.md`` that ``fedssl bench`` wrote byte for byte.
"""

from fedssl.report.model import (ACC, FINAL, FINISHED, PLOTS, REPORT_HTML, RESULTS_CSV, SEED_KEY, SUMMARY_MD, Bench,
                                 Cell, finished_summary, load_bench, read_json, results_frame)
from fedssl.report.render import render, render_bench, render_run, write_results
from fedssl.report.stats import Group, groups_of, summary_stats

__all__ = ["ACC", "FINAL", "FINISHED", "PLOTS", "REPORT_HTML", "RESULTS_CSV", "SEED_KEY", "SUMMARY_MD", "Bench",
           "Cell", "Group", "finished_summary", "groups_of", "load_bench", "read_json", "render", "render_bench",
           "render_run", "results_frame", "summary_stats", "write_results"]
