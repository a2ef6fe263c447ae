"""Report plot helpers (matplotlib, Agg canvas, no pyplot state): saving, smoothing, the colour cycle,
memory bars, and :func:`line_panels` for any other named series (an experiment's SNR vs lr, say). The
report's own section figures, in one style, are in :mod:`slimbench.report.figures`.

Each plotting function takes rows, writes PNGs into a folder and returns ``[(title, path)]``. Figures are
built on ``matplotlib.figure.Figure`` with an Agg canvas, so nothing touches a display or pyplot's global
figure list (safe in tests and threads).
"""
from __future__ import annotations

import math
import re
import textwrap
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

from slimbench.io import write_atomic
from slimbench.report.table import MIB

DPI = 110
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
           "#7f7f7f", "#393b79", "#ad494a", "#637939")  # one per optimizer or series, AdamW aside (black)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:80] or "plot"


def _save(fig: Figure, out: Path, name: str) -> str:
    """Render to a unique temp file beside the PNG, then rename: a planted symlink or a full disk never
    leaves a written-through target or a 0-byte PNG."""
    path = out / f"{_slug(name)}.png"
    FigureCanvasAgg(fig)
    if fig.get_layout_engine() is None:  # figures built with layout="constrained" lay themselves out
        fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=DPI))
    return str(path)


def _smooth(values: Sequence[float | None], window: int) -> list[float | None]:
    """Trailing moving average over finite values (None stays a gap)."""
    out: list[float | None] = []
    for i, v in enumerate(values):
        if v is None:
            out.append(None)
            continue
        w = [x for x in values[max(0, i - window + 1): i + 1] if x is not None and math.isfinite(x)]
        out.append(sum(w) / len(w) if w else None)
    return out


def memory_bars(rows: Sequence[dict], out: str | Path) -> list[tuple[str, str]]:
    """Per context: optimizer state MiB (and peak MiB where measured) per optimizer."""
    by_ctx: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r.get("state_bytes") is not None:
            by_ctx[r["context"]].append(r)
    written = []
    for ctx, rs in by_ctx.items():
        fig = Figure(figsize=(max(5.0, 0.55 * len(rs) + 2), 4.0))
        ax = fig.add_subplot()
        xs = range(len(rs))
        has_peak = any(r.get("peak_bytes") is not None for r in rs)
        width = 0.4 if has_peak else 0.7
        ax.bar([x - (width / 2 if has_peak else 0) for x in xs], [r["state_bytes"] / MIB for r in rs], width,
               label="optimizer state")
        if has_peak:
            ax.bar([x + width / 2 for x in xs], [(r.get("peak_bytes") or 0) / MIB for r in rs], width,
                   label="step peak (params + grads + state + transient)")
        ax.set_xticks(list(xs), [r["optimizer"] for r in rs], rotation=45, ha="right", fontsize=8)
        ax.set_ylabel("MiB")
        ax.set_title(ctx, fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        written.append((f"Memory: {ctx}", _save(fig, Path(out), f"memory-{ctx}")))
    return written


Series = Mapping[str, tuple]  # label -> (xs, ys) or (xs, ys, errors): errors drawn as bars (None: none)


def line_panels(panels: Mapping[str, Series], out: str | Path, name: str, title: str, xlabel: str, ylabel: str,
                *, logx: bool = False, logy: bool = False, colours: Mapping[str, str] | None = None,
                hline: tuple[float, str] | None = None) -> list[tuple[str, str]]:
    """One PNG ``name``.png of line plots, one subplot per panel (4 across), one line per series, in the
    report's style: one colour per series label across panels (``colours``, else the report's cycle), one
    legend beside the panels, ``hline`` = (y, label) a dashed reference (a cutoff, AdamW's loss).

    For figures that are not one of the report's own. Points with a missing or non-finite y (or y <= 0 on
    a log y axis) are left out; panels without a point are dropped, and nothing is written without any.
    """
    def points(xs, ys, errs=None) -> list[tuple[float, float, float]]:
        errs = errs if errs is not None else [None] * len(xs)
        return sorted((x, y, e if e is not None and math.isfinite(e) else 0.0) for x, y, e in zip(xs, ys, errs)
                      if y is not None and math.isfinite(y) and (not logy or y > 0))

    drawn = {p: {label: pts for label, v in series.items() if (pts := points(*v))} for p, series in panels.items()}
    drawn = {p: s for p, s in drawn.items() if s}
    if not drawn:
        return []
    labels = list(dict.fromkeys(label for s in drawn.values() for label in s))
    colour = {lab: (colours or {}).get(lab, COLOURS[i % len(COLOURS)]) for i, lab in enumerate(labels)}
    n = len(drawn)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    width = 4.6 * cols + 3.0
    fig = Figure(figsize=(width, 3.4 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    handles: dict[str, object] = {}
    for ax, (panel, series) in zip(axes.flat, drawn.items()):
        for label, pts in series.items():
            errs = [e for _, _, e in pts]
            line = ax.errorbar([x for x, _, _ in pts], [y for _, y, _ in pts], yerr=errs if any(errs) else None,
                               marker="o", ms=4, lw=1.5, capsize=3, color=colour[label])
            handles[label] = line
        if hline is not None:
            handles[hline[1]] = ax.axhline(hline[0], color="black", ls="--", lw=1)
        if n > 1:
            ax.set_title(panel, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        xs = sorted({x for pts in series.values() for x, _, _ in pts})
        if logx:
            ax.set_xscale("log")
            _plain_log(ax.xaxis, xs if len(xs) <= 8 else None)
        if logy:
            ax.set_yscale("log")
            _plain_log(ax.yaxis)
        ax.grid(alpha=0.3, which="both")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.legend(list(handles.values()), list(handles), loc="outside right center", fontsize=7, frameon=False)
    fig.suptitle(textwrap.fill(title, int(12 * width)), fontsize=9)  # ~12 characters per inch
    return [(title, _save(fig, Path(out), name))]


def _plain_log(axis, ticks: Sequence[float] | None = None) -> None:
    """A log axis labelled in plain numbers (0.3, 1, 3; or exactly ``ticks``, e.g. the grid's values),
    without the crowded minor labels matplotlib puts on axes spanning less than a decade or two."""
    if ticks:
        axis.set_major_locator(FixedLocator(list(ticks)))
    else:
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())
