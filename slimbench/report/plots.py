"""Report plots (matplotlib, Agg canvas, no pyplot state): loss-vs-lr U-curves, loss-vs-step curves, memory bars,
and :func:`line_panels` for any other named series (an experiment's SNR vs depth, say).

Each function takes rows from the section modules (:mod:`slimbench.report.lr`, ...; or the collection for
curves), writes PNGs into a folder, and returns ``[(title, path)]``. Figures are built on ``matplotlib.figure.Figure`` with an
Agg canvas, so nothing touches a display or pyplot's global figure list (safe in tests and threads).
"""
from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from slimbench.bench.results import RunResult
from slimbench.io import write_atomic
from slimbench.report.load import Collection
from slimbench.report.runs import optimizer_label, task_label
from slimbench.report.table import MIB

DPI = 110


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


def lr_curves(lr_rows: Sequence[dict], out: str | Path) -> list[tuple[str, str]]:
    """Per task: final loss vs lr (log x), one line per optimizer, seed std as error bars, x at divergence."""
    by_task: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in lr_rows:
        by_task[r["task"]][r["optimizer"]].append(r)
    written = []
    for task, per_opt in sorted(by_task.items()):
        fig = Figure(figsize=(6.4, 4.2))
        ax = fig.add_subplot()
        finite = [r["final_mean"] for rs in per_opt.values() for r in rs if r["final_mean"] is not None]
        top = max(finite) if finite else 1.0
        for k, (opt, rs) in enumerate(sorted(per_opt.items())):
            rs = sorted(rs, key=lambda r: r["lr"])
            ok = [r for r in rs if r["final_mean"] is not None]
            line = ax.errorbar([r["lr"] for r in ok], [r["final_mean"] for r in ok],
                               yerr=[r["final_std"] or 0.0 for r in ok], marker="o", ms=4, capsize=3, label=opt)
            div = [r["lr"] for r in rs if r["diverged"]]
            if div:
                # one row of x per optimizer above the curves, so markers of several optimizers do not hide each other
                ax.scatter(div, [top * (1.03 + 0.04 * k)] * len(div), marker="x", s=50, color=line[0].get_color())
        ax.set_xscale("log")
        ax.set_xlabel("peak learning rate")
        ax.set_ylabel("final loss (mean over seeds)")
        ax.set_title(f"{task}: loss vs lr (x = diverged)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        written.append((f"Loss vs lr: {task}", _save(fig, Path(out), f"lr-{task}")))
    return written


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


def loss_curves(c: Collection, out: str | Path, max_plots: int = 24,
                task_of: Callable[[RunResult], str] = task_label) -> list[tuple[str, str]]:
    """Per task and lr: training loss (smoothed, mean over seeds) vs step per optimizer; validation dots.

    ``task_of`` names the task of a run: runs with the same name and lr share a plot (an experiment may
    pool sweeps that differ in an override, e.g. an optimizer without weight decay).
    """
    groups: dict[tuple[str, float], dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for item in c.runs:
        r = item.data
        groups[(task_of(r), r.config.lr)][optimizer_label(r)].append(r)
    written = []
    for (task, lr), per_opt in sorted(groups.items())[:max_plots]:
        fig = Figure(figsize=(6.4, 4.2))
        ax = fig.add_subplot()
        for opt, runs in sorted(per_opt.items()):
            n = max(len(r.train_loss) for r in runs)
            mean = []
            for s in range(n):
                vals = [r.train_loss[s] for r in runs if s < len(r.train_loss) and r.train_loss[s] is not None]
                mean.append(sum(vals) / len(vals) if vals else None)
            window = max(1, n // 50)
            ys = _smooth(mean, window)
            line = ax.plot(range(n), [y if y is not None else float("nan") for y in ys], lw=1.2,
                           label=f"{opt} ({len(runs)} seed{'s' if len(runs) > 1 else ''})")
            vsteps: dict[int, list[float]] = defaultdict(list)
            for r in runs:
                for v in r.val:
                    if v["loss"] is not None:
                        vsteps[v["step"]].append(v["loss"])
            if vsteps:
                xs = sorted(vsteps)
                ax.plot(xs, [sum(vsteps[x]) / len(vsteps[x]) for x in xs], "o--", ms=3, lw=0.8,
                        color=line[0].get_color(), alpha=0.8)
            for r in runs:
                if r.status == "diverged" and r.divergence:
                    ax.axvline(r.divergence["step"], color=line[0].get_color(), ls=":", lw=1)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (smoothed); dots: validation")
        ax.set_title(f"{task}, lr {lr:g}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        written.append((f"Loss vs step: {task}, lr {lr:g}", _save(fig, Path(out), f"steps-{task}-lr{lr:g}")))
    return written


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


Series = Mapping[str, tuple[Sequence[float], Sequence[float | None]]]  # label -> (xs, ys)


def line_panels(panels: Mapping[str, Series], out: str | Path, name: str, title: str, xlabel: str, ylabel: str,
                *, logx: bool = False, logy: bool = False) -> list[tuple[str, str]]:
    """One PNG ``name``.png of line plots, one subplot per panel (4 across), one line per series.

    For figures that are not one of the report's own. Points with a missing or non-finite y (or y <= 0 on
    a log y axis) are left out; panels without a point are dropped, and nothing is written without any.
    """
    def points(xs: Sequence[float], ys: Sequence[float | None]) -> list[tuple[float, float]]:
        return sorted((x, y) for x, y in zip(xs, ys) if y is not None and math.isfinite(y) and (not logy or y > 0))

    drawn = {p: {label: pts for label, (xs, ys) in series.items() if (pts := points(xs, ys))}
             for p, series in panels.items()}
    drawn = {p: s for p, s in drawn.items() if s}
    if not drawn:
        return []
    n = len(drawn)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (panel, series) in zip(axes.flat, drawn.items()):
        for label, pts in series.items():
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", ms=3, label=label)
        ax.set_title(panel if n > 1 else title, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if logx:
            ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if n > 1:
        fig.suptitle(title, fontsize=10)
    return [(title, _save(fig, Path(out), name))]
