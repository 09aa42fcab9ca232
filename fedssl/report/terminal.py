"""A run's final accuracies as a table on the terminal (``fedssl run``, ``fedssl deploy``)."""

from __future__ import annotations

from typing import Any

from fedssl.report.model import FINAL, ORCA_PROTOCOL


def print_summary(summary: dict[str, Any], out_dir: str) -> None:
    """The final accuracies of a run as a table, then its status and files."""
    from rich.console import Console
    from rich.table import Table

    final = summary.get("final", {})
    cfg = summary.get("config", {})
    table = Table(title=f"{cfg.get('server', {}).get('strategy')} + "
                        f"{cfg.get('client', {}).get('algorithm')} after round {final.get('round')}")
    # open world: all-class accuracy and the all-sample matching's columns lead, the ORCA
    # protocol's follow; a closed-world run shows no unseen column
    cols = [c for c in FINAL if c in ("acc_all", "acc_seen", "loss") or final.get(c) is not None]
    for col in cols:
        table.add_column(col.removeprefix("acc_").replace("_", " ") + (" ¹" if col in ORCA_PROTOCOL else ""),
                         justify="right")
    if any(c in ORCA_PROTOCOL for c in cols):
        table.caption = "¹ ORCA protocol: matched on the unseen samples alone (credits absorption)"
    table.add_row(*[("-" if final.get(c) is None else f"{final[c]:.0f}" if c == "discovered"
                     else f"{final[c]:.4f}") for c in cols])
    console = Console()
    console.print(table)
    console.print(f"status: {summary.get('status')}   elapsed: {summary.get('elapsed_s', 0):.1f} s   "
                  f"files: {out_dir}/metrics.csv, summary.json, config.toml")
