"""``report.html``: one self-contained page (a Jinja2 template; tables rendered by
pandas' Styler; plots embedded as ``data:`` URIs, so the file opens anywhere)."""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedssl.report.model import Bench, column_label
from fedssl.report.layout import fmt_value
from fedssl.report.stats import summary_cells

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;
max-width:1400px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f2f2f2}
img{max-width:100%;height:auto;display:block;margin:1em 0;border:1px solid #eee}
code{background:#f5f5f5;padding:0 3px}.scroll{overflow-x:auto}.muted{color:#777;font-size:12px}
</style></head>
<body>
<h1>{{ title }}</h1>
{% if note %}<p class="muted">{{ note }}</p>{% endif %}
{% for s in sections %}
<h2>{{ s.heading }}</h2>
{% if s.text %}<p>{{ s.text }}</p>{% endif %}
{% if s.table %}<div class="scroll">{{ s.table | safe }}</div>{% endif %}
{% if s.image %}<figure><img alt="{{ s.heading }}" src="data:image/png;base64,{{ s.image }}"></figure>{% endif %}
{% endfor %}
<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images-loaded', ok + '/' + imgs.length);
  document.body.setAttribute('data-images-ok', ok === imgs.length ? 'true' : 'false');
});
</script>
</body></html>
"""

_ROW_COLORS = {"failed": "#fde8e8", "pending": "#fff7e0", "interrupted": "#fff7e0"}


@dataclass
class Section:
    heading: str
    text: str = ""
    table: str = ""  # HTML from a Styler
    image: str = ""  # base64 PNG


def image_section(heading: str, text: str, png: Path) -> Section:
    return Section(heading, text, image=base64.b64encode(png.read_bytes()).decode("ascii"))


def page(title: str, note: str, sections: list[Section]) -> str:
    from jinja2 import Environment

    return Environment(autoescape=True).from_string(_PAGE).render(title=title, note=note, sections=sections)


def _styled(df, css, uid: str) -> str:
    """A string DataFrame as an HTML table: values escaped, no index, ``css`` per cell
    (a fixed ``uid`` keeps the page the same for the same files)."""
    return (df.style.set_uuid(uid).format(escape="html").hide(axis="index").apply(css, axis=None)
            .set_table_styles([{"selector": "th", "props": "text-align: left"}]).to_html())


def summary_table(bench: Bench, results) -> str:
    """The summary (mean ± std per configuration); each column's best mean in bold."""
    import pandas as pd

    cols, rows = summary_cells(bench, results)
    header = (bench.group_keys or ["configuration"]) + ["n"] + [column_label(c) for c in cols]
    df = pd.DataFrame([head + [text for text, _ in vals] for head, vals in rows], columns=header)
    bold = [[False] * len(head) + [top for _, top in vals] for head, vals in rows]
    css = pd.DataFrame([["font-weight: bold" if b else "" for b in r] for r in bold], columns=header)
    return _styled(df, lambda _: css, "summary")


def _cell_text(col: str, v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)) or str(v) in ("<NA>", "nan"):
        return ""
    if isinstance(v, float):
        return f"{v:.4f}" if col.startswith(("acc", "best_acc", "loss")) else f"{v:.1f}"
    return fmt_value(v)


def results_table(results) -> str:
    """Every cell, one row each; failed rows red, pending / interrupted ones yellow."""
    import pandas as pd

    records = results.to_dict("records")
    df = pd.DataFrame([{c: _cell_text(c, r[c]) for c in results.columns} for r in records],
                      columns=list(results.columns))
    colors = [_ROW_COLORS.get(str(r["status"]), "") for r in records]
    css = pd.DataFrame([[f"background-color: {c}" if c else ""] * len(df.columns) for c in colors],
                       columns=df.columns)
    return _styled(df, lambda _: css, "cells")
