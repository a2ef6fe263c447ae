"""The report's table model and cell formatting: :class:`Table` of :class:`Column` s and raw rows, grouped in
:class:`Section` s; :func:`format_value` turns a raw value into cell text. No section's content lives here.

Every row carries ``sources``: the files its numbers were read from.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

MIB = 2 ** 20


@dataclass(frozen=True)
class Column:
    """One column: the row key it shows, its header, and how to format it (see :func:`format_value`)."""

    key: str
    header: str
    fmt: str = "str"


@dataclass
class Table:
    title: str
    columns: list[Column]
    rows: list[dict]
    note: str = ""

    @property
    def headers(self) -> list[str]:
        return [c.header for c in self.columns]

    def values(self) -> list[list[Any]]:
        """Raw cell values in column order (for JSON: numbers keep their precision, unlike :meth:`cells`)."""
        return [[r.get(c.key) for c in self.columns] for r in self.rows]

    def to_dict(self) -> dict:
        return {"title": self.title, "headers": self.headers, "rows": self.values(), "note": self.note}

    def cells(self, source_ref: Callable[[Sequence[str]], str] | None = None) -> tuple[list[str], list[list[str]]]:
        """(headers, formatted rows); a 'src' column of source references when ``source_ref`` is given."""
        headers = [c.header for c in self.columns]
        rows = [[format_value(r.get(c.key), c.fmt) for c in self.columns] for r in self.rows]
        if source_ref is not None:
            headers.append("src")
            rows = [cells + [source_ref(r.get("sources", ()))] for cells, r in zip(rows, self.rows, strict=True)]
        return headers, rows


@dataclass
class Section:
    """A report section: its tables, plus names of plots markdown.py attaches (filled there)."""

    key: str  # memory, lr, steps, training, snr, step_time, environment
    title: str
    tables: list[Table] = field(default_factory=list)
    text: str = ""


@dataclass(frozen=True)
class Options:
    """Report settings (CLI flags map 1:1)."""

    loss: str = "final_val_loss"  # run summary key: final_val_loss | final_train_loss
    within: float = 0.05  # robustness: lrs within this fraction of the best loss
    steps: tuple[int, ...] | None = None  # loss-vs-step columns (default: 5 evenly spaced)


def finite(x: Any) -> bool:
    """A real, finite number (not a bool)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def format_value(v: Any, fmt: str = "str") -> str:
    """Cell text: '-' for missing. fmt: str, int, g, g4, f3, f4, mib, x2, pct, ms, bool, lrs, and
    pm / pm+ for a pair (mean, spread) shown as 'mean ± spread' (pm+: the mean signed, for gaps),
    ci / ci+ / ci_g / ci_x for an interval dict (:func:`format_interval`)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, str):  # text in a numeric column ("div@12") is shown as is
        return v
    if fmt == "int":
        return f"{int(v):,}"
    if fmt == "g":
        return f"{v:g}"
    if fmt == "g4":  # 4 significant digits for floats; integers (counts, sizes) in full
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    if fmt in ("f2", "f3", "f4"):
        return f"{v:.{fmt[1]}f}"
    if fmt == "mib":
        return f"{v / MIB:.3f}" if abs(v) < 10 * MIB else f"{v / MIB:.1f}"
    if fmt == "x2":
        return f"{v:.2f}x"
    if fmt == "pct":
        return f"{100 * v:.1f}%"
    if fmt == "ms":
        return f"{1e3 * v:.2f}"
    if fmt == "bool":
        return "yes" if v else "no"
    if fmt in ("pm", "pm+"):
        mean, spread = v
        if mean is None:
            return "-"
        return f"{mean:{'+' if fmt == 'pm+' else ''}.4f}" + (f" ± {spread:.4f}" if spread is not None else "")
    if fmt == "lrs":
        return ", ".join(f"{x:g}" for x in v) or "-"
    if fmt in _CI_FORMATS:  # an interval dict (slimbench.bench.intervals.Interval.to_dict)
        return format_interval(v, fmt)
    return str(v)


_CI_FORMATS = {"ci": "{:.4f}", "ci+": "{:+.4f}", "ci_g": "{:g}", "ci_x": "{:.3g}x"}


def format_interval(v: dict, fmt: str = "ci") -> str:
    """``estimate [lo, hi]`` (ci: 4 decimals, ci+: signed, ci_g: lrs, ci_x: widths); no interval: estimate only."""
    f = _CI_FORMATS[fmt]
    text = f.format(v["estimate"])
    if v.get("lo") is None or v.get("hi") is None:
        return text + " (1 seed)"
    return f"{text} [{f.format(v['lo'])}, {f.format(v['hi'])}]"


def table_from_lists(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]], note: str = "",
                     fmt: str | Sequence[str] = "g4") -> Table:
    """A :class:`Table` from positional rows (one cell per header), for tables that are not one of the
    report's sections (e.g. an experiment's own comparison), so they render and serialise like the rest.

    ``fmt``: one :func:`format_value` format for every column, or one per column.
    """
    fmts = [fmt] * len(headers) if isinstance(fmt, str) else list(fmt)
    if len(fmts) != len(headers):
        raise ValueError(f"{title!r}: {len(fmts)} formats for {len(headers)} columns")
    columns = [Column(f"c{i}", h, f) for i, (h, f) in enumerate(zip(headers, fmts))]
    for r in rows:
        if len(r) != len(columns):
            raise ValueError(f"{title!r}: a row has {len(r)} cells for {len(columns)} columns: {list(r)!r}")
    return Table(title, columns, [{c.key: v for c, v in zip(columns, r)} for r in rows], note)
