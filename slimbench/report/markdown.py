"""Write the report: ``report.md`` with every section's tables, the PNG plots beside it, numbered sources.

Each table row ends with a ``src`` cell, e.g. ``[3]`` or ``[4-9]``, pointing into the numbered list of
files at the end of the report, so every number traces to the file it was read from (and that file's
own provenance says which command, commit and machine produced it).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from tabulate import tabulate

from slimbench.io import write_atomic, write_json_atomic
from slimbench.report import figures, html
from slimbench.report import plots as _plots
from slimbench.report.load import Collection
from slimbench.report.memory import memory_rows
from slimbench.report.sections import build_sections
from slimbench.report.table import Options, Section, Table


@dataclass
class WrittenReport:
    """What :func:`write_report` produced."""

    path: str
    images: list[str]
    sections: list[Section]
    sources: list[str]
    index_path: str | None = None
    notes: list[str] = field(default_factory=list)


class SourceIndex:
    """Numbers the collection's files (1-based, load order) and renders a row's sources as ``[1, 3-5]``."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = list(paths)
        self._num = {p: i + 1 for i, p in enumerate(self.paths)}

    def ref(self, sources: Sequence[str]) -> str:
        nums = sorted({self._num[p] for p in sources if p in self._num})
        if not nums:
            return ""
        parts, start, prev = [], nums[0], nums[0]
        for n in nums[1:] + [None]:
            if n is not None and n == prev + 1:
                prev = n
                continue
            parts.append(f"{start}" if start == prev else f"{start}-{prev}")
            if n is not None:
                start = prev = n
        return "[" + ", ".join(parts) + "]"


def render_table(table: Table, index: SourceIndex | None, fmt: str = "github") -> str:
    headers, rows = table.cells(index.ref if index else None)
    return tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True)


def table_markdown(table: Table, index: SourceIndex | None = None, level: int = 3) -> str:
    """A table as a report shows it: its title as a heading, the table, its note in italics.

    Used for report.md and for any other Markdown of tables (an experiment's tables.md), so they match.
    """
    text = f"{'#' * level} {table.title}\n\n{render_table(table, index)}"
    return text + (f"\n\n*{table.note}*" if table.note else "")


def render(sections: Sequence[Section], index: SourceIndex, images: dict[str, list[tuple[str, str]]],
           out_dir: Path, header: str, skipped: Sequence[tuple[str, str]]) -> str:
    """The Markdown text of a report (pure: no files touched)."""
    lines = ["# slimbench report", "", header, ""]
    for sec in sections:
        lines += [f"## {sec.title}", ""]
        if sec.text:
            lines += [sec.text, ""]
        for table in sec.tables:
            lines += [table_markdown(table, index), ""]
        for title, path in images.get(sec.key, []):
            rel = Path(path).resolve().relative_to(out_dir.resolve()) if Path(path).resolve().is_relative_to(
                out_dir.resolve()) else Path(path)
            lines += [f"![{title}]({rel.as_posix()})", ""]
    lines += ["## Sources", ""]
    lines += [f"{i + 1}. `{p}`" for i, p in enumerate(index.paths)] or ["(none)"]
    if skipped:
        lines += ["", "Files found but not read:", ""]
        lines += [f"- `{p}`: {why}" for p, why in skipped]
    return "\n".join(lines) + "\n"


def draw_figures(c: Collection, sections: Sequence[Section], out_dir: Path, opts: Options) -> dict[str, list]:
    """Every section's figures, {section key: [Drawn]}, from the rows its tables show; one palette."""
    rows = {s.key: {t.title: t.rows for t in s.tables} for s in sections}
    names = figures.names_of(c)
    palette = figures.Palette(names.values())
    claims = next(iter(rows.get("claims", {}).values()), [])
    lr = rows.get("lr", {}).get("Final loss per learning rate", [])
    step = rows.get("step_time", {})
    mem = memory_rows(c)
    out: dict[str, list] = {
        "memory": [figures.Drawn(t, p) for t, p in _plots.memory_bars(mem, out_dir)],
        "lr": figures.loss_vs_lr(lr, claims, out_dir, palette, names),
        "claims": figures.memory_quality(claims, mem, out_dir, palette, names),
        "steps": figures.loss_vs_step(c, out_dir, palette, names),
        "snr": figures.snr_figures(next(iter(rows.get("snr", {}).values()), []), c, out_dir),
        "step_time": figures.step_time(step.get("Training step in sweeps", []),
                                       step.get("Fused / foreach kernels (pytest suites)", []), out_dir, palette, names),
    }
    return {k: v for k, v in out.items() if v}


def write_report(c: Collection, out: str | Path, opts: Options | None = None, *, plots: bool = True,
                 command: str | None = None) -> WrittenReport:
    """Build every section from ``c``, draw the plots into ``out`` and write ``out/report.md``.

    Also writes ``out/report.json``: the sections' rows as data (for scripts), with the same sources, and
    ``out/report.html``: the same report as one self-contained file (figures embedded).
    """
    opts = opts or Options()
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = build_sections(c, opts)
    index = SourceIndex(c.paths)
    images: dict[str, list[tuple[str, str]]] = {}
    if plots:
        images = {k: [(d.title, d.path) for d in v] for k, v in draw_figures(c, sections, out_dir, opts).items()}
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    counts = ", ".join(f"{v} {k}" for k, v in c.counts().items() if v)
    header = f"Generated {when} from {len(c)} files ({counts or 'none'})" + \
             (f" by `{command}`" if command else "") + ". `src` cells number the files listed under Sources."
    text = render(sections, index, images, out_dir, header, c.skipped)
    path = write_atomic(out_dir / "report.md", text)  # a unique temp file + rename: never writes through a link
    data = {"format": "slimbench.report", "version": 1, "generated": when, "command": command,
            "options": {"loss": opts.loss, "within": opts.within, "steps": list(opts.steps) if opts.steps else None},
            "sources": index.paths, "skipped": [list(s) for s in c.skipped],
            "sections": [{"key": s.key, "title": s.title, "text": s.text,
                          "tables": [{"title": t.title, "note": t.note, "rows": t.rows} for t in s.tables]}
                         for s in sections]}
    index_path = write_json_atomic(out_dir / "report.json", data)
    write_atomic(out_dir / "report.html", html.render(sections, index, images, header, c.skipped))
    return WrittenReport(str(path), [p for imgs in images.values() for _, p in imgs], sections, index.paths,
                         str(index_path))
