"""``summary.md``: mean ± std over seeds per configuration, best mean per column in bold."""

from __future__ import annotations

from pathlib import Path

from fedssl.report.model import SEED_KEY, Bench, column_label
from fedssl.report.stats import reference_gains, status_counts, summary_cells


def md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _failures(bench: Bench) -> list[str]:
    bad = [c for c in bench.cells if c.status in ("failed", "interrupted")]
    if not bad:
        return []
    lines = ["", "## Cells that did not finish", "", "| cell | status | exit | error |", "|---|---|--:|---|"]
    for c in bad:
        code = "" if c.exit_code is None else str(c.exit_code)
        lines.append(f"| {md_escape(c.id)} | {c.status} | {code} | {md_escape(c.error)} |")
    return lines


def summary_markdown(bench: Bench, results) -> str:
    n = status_counts(bench)
    done = n["ok"] + n["diverged"]
    title = Path(bench.grid_file).name or bench.dir.name
    lines = [f"# Benchmark: {title}", "",
             (f"{done} of {len(bench.cells)} cells finished ({n['diverged']} diverged, "
              f"{n['failed']} failed, {n['interrupted']} interrupted, {n['pending']} pending)."), "",
             (f"Mean ± std over `{SEED_KEY}` (n = finished runs / cells of the configuration); "
              "accuracies in %, final round unless `best_`; `wall_s` is training time in "
              "seconds. The best mean of each column is in **bold**."), ""]
    cols, rows = summary_cells(bench, results)
    if "acc_unseen_strict" in cols:
        lines[-2] += (" Open world: `acc_all`, `acc_unseen_strict` and `discovered` (unseen classes "
                      "that own an output and get at least half their samples right) use one "
                      "matching over all samples; the ORCA protocol's columns match the unseen "
                      "samples alone, which credits an unseen class absorbed into a seen output.")
    keys = bench.group_keys or ["configuration"]
    lines.append("| " + " | ".join(keys + ["n"] + [column_label(c) for c in cols]) + " |")
    lines.append("|" + "|".join(["---"] * len(keys) + ["--:"] * (1 + len(cols))) + "|")
    for head, vals in rows:
        cells = [md_escape(v) for v in head[:-1]] + [head[-1]]
        cells += [f"**{text}**" if top else text for text, top in vals]
        lines.append("| " + " | ".join(cells) + " |")
    gains = reference_gains(bench, results)
    if gains:
        lines += ["", "## Over the supervised reference", ""] + [f"- {g}" for g in gains]
    return "\n".join(lines + _failures(bench)) + "\n"
