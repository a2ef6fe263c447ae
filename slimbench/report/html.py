"""``report.html``: the report as one self-contained file to share (tables, notes, figures embedded as
base64 PNGs, the numbered sources), rendered from the same sections and figures as ``report.md``."""
from __future__ import annotations

import base64
from collections.abc import Sequence
from html import escape
from pathlib import Path

from slimbench.report.table import Section, Table

STYLE = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:12px;margin:.5em 0}th,td{border:1px solid #ccc;padding:2px 6px}
th{background:#f3f3f3}td{text-align:right}td:first-child,td:nth-child(2){text-align:left}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}.note{font-style:italic;color:#555;font-size:12px}"""


def _table(table: Table, index) -> str:
    headers, rows = table.cells(index.ref)
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    note = f'<p class="note">{escape(table.note)}</p>' if table.note else ""
    return f"<h3>{escape(table.title)}</h3><table><tr>{head}</tr>{body}</table>{note}"


def _image(title: str, path: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<figure><img alt="{escape(title)}" src="data:image/png;base64,{data}"><figcaption>{escape(title)}' \
           "</figcaption></figure>"


def render(sections: Sequence[Section], index, images: dict[str, list[tuple[str, str]]], header: str,
           skipped: Sequence[tuple[str, str]]) -> str:
    """The HTML text (reads the PNGs named in ``images``; writes nothing)."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>slimbench report</title>",
             f"<style>{STYLE}</style></head><body><h1>slimbench report</h1><p>{escape(header)}</p>"]
    for sec in sections:
        parts.append(f"<h2>{escape(sec.title)}</h2>")
        if sec.text:
            parts.append(f"<p>{escape(sec.text)}</p>")
        parts += [_table(t, index) for t in sec.tables]
        parts += [_image(title, path) for title, path in images.get(sec.key, [])]
    parts.append("<h2>Sources</h2><ol>" + "".join(f"<li><code>{escape(p)}</code></li>" for p in index.paths) + "</ol>")
    if skipped:
        parts.append("<p>Files found but not read:</p><ul>"
                     + "".join(f"<li><code>{escape(p)}</code>: {escape(w)}</li>" for p, w in skipped) + "</ul>")
    return "\n".join(parts) + "\n</body></html>\n"
