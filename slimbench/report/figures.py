"""The report's figures, one function per section, drawn from the same rows as its tables.

Each function returns :class:`Drawn` records: a title, the PNG path and ``data``, the numbers plotted (so
tests check them against the tables). Optimizers are named as people name them ("SlimAdam (paper
rules)") and keep one colour across every figure of a report (:class:`Palette`).
"""
from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure

from slimbench.report.load import Collection, Item
from slimbench.report.plots import COLOURS, _plain_log, _save, _smooth
from slimbench.report.runs import display_name, optimizer_label, rules_names, task_label

MAX_PANELS = 6
ROLE_COLOURS = {"fan_out": "#1f77b4", "fan_in": "#ff7f0e", "both": "#2ca02c"}  # candidate K, in every SNR figure


@dataclass
class Drawn:
    """One written figure: title (for report.md), path, and the plotted numbers."""

    title: str
    path: str
    data: dict = field(default_factory=dict)


class Palette:
    """One colour per optimizer name for a whole report; AdamW is always black."""

    def __init__(self, names: Iterable[str]) -> None:
        others = sorted({n for n in names if n != "AdamW"})
        self._map = {n: COLOURS[i % len(COLOURS)] for i, n in enumerate(others)}
        self._map["AdamW"] = "#000000"

    def __call__(self, name: str) -> str:
        return self._map.get(name, "#7f7f7f")


def names_of(c: Collection) -> dict[str, str]:
    """{optimizer key (:func:`optimizer_label`): display name} over the collection's runs."""
    rules = rules_names(c.rules)
    return {optimizer_label(i.data): display_name(i.data, rules) for i in c.runs}


def _order(names: Iterable[str]) -> list[str]:
    return sorted(names, key=lambda n: (n != "AdamW", n))


def report_group(item: Item) -> tuple[str, str]:
    """(task, optimizer key) of a run as the report groups it."""
    return task_label(item.data), optimizer_label(item.data)


def loss_vs_step(c: Collection, out: str | Path, palette: Palette, names: Mapping[str, str],
                 group: Callable[[Item], tuple[str, str]] = report_group) -> list[Drawn]:
    """Per task: one panel per lr (up to :data:`MAX_PANELS`, the lowest and highest kept), shared y-limits;
    per optimizer the training loss per step (mean over seeds; raw faint, smoothed solid), validation as
    markers, an x where a seed diverged.

    ``group`` names a run's (task, optimizer key), the key looked up in ``names``: an experiment pools
    sweeps that differ in an override under one task, or tells apart sweeps of the same optimizer."""
    by_task: dict[str, dict[float, dict[str, list]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for item in c.runs:
        task, opt = group(item)
        by_task[task][item.data.config.lr][opt].append(item.data)
    drawn = []
    for task, per_lr in sorted(by_task.items()):
        lrs = sorted(per_lr)
        if len(lrs) > MAX_PANELS:
            idx = sorted({round(i * (len(lrs) - 1) / (MAX_PANELS - 1)) for i in range(MAX_PANELS)})
            lrs = [lrs[i] for i in idx]
        cols = min(3, len(lrs))
        rows = math.ceil(len(lrs) / cols)
        fig = Figure(figsize=(4.6 * cols, 3.5 * rows + 0.6), layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
        data: dict = {}
        finite_vals: list[float] = []
        for ax, lr in zip(axes.flat, lrs):
            for opt in sorted(per_lr[lr], key=lambda o: (names.get(o, o) != "AdamW", names.get(o, o))):
                runs, name = per_lr[lr][opt], names.get(opt, opt)
                n = max(len(r.train_loss) for r in runs)
                mean = []
                for s in range(n):
                    vals = [r.train_loss[s] for r in runs if s < len(r.train_loss) and _ok(r.train_loss[s])]
                    mean.append(sum(vals) / len(vals) if vals else None)
                smooth = _smooth(mean, max(1, n // 30))
                col = palette(name)
                ax.plot(range(n), [_nan(y) for y in mean], color=col, lw=0.6, alpha=0.25)
                ax.plot(range(n), [_nan(y) for y in smooth], color=col, lw=1.5, label=f"{name} ({len(runs)} seeds)")
                finite_vals += [y for y in mean if y is not None]
                val: dict[int, list[float]] = defaultdict(list)
                for r in runs:
                    for v in r.val:
                        if _ok(v.get("loss")):
                            val[v["step"]].append(v["loss"])
                vx = sorted(val)
                vy = [sum(val[x]) / len(val[x]) for x in vx]
                ax.plot(vx, vy, "o", color=col, ms=5, mfc="white", mew=1.5)
                div = [r.divergence["step"] for r in runs if r.status == "diverged" and r.divergence]
                for step in div:
                    y = next((m for m in reversed(mean[: step + 1]) if m is not None), None)
                    ax.plot([step], [y if y is not None else 0], "x", color=col, ms=10, mew=2.5)
                data[(lr, name)] = {"train_mean": mean, "val_steps": vx, "val_mean": vy, "diverged_at": div}
            ax.set_title(f"peak lr {lr:g}", fontsize=9)
            ax.set_xlabel("training step")
            ax.grid(alpha=0.3)
        for ax in axes[:, 0]:
            ax.set_ylabel("loss (nats)")
        for ax in list(axes.flat)[len(lrs):]:
            ax.axis("off")
        if finite_vals:
            lo, hi = min(finite_vals), _quantile(finite_vals, 0.98)
            axes[0, 0].set_ylim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
        handles, labels = axes[0, 0].get_legend_handles_labels()
        seen = dict(zip(labels, handles))
        for ax in axes.flat:
            h, lab = ax.get_legend_handles_labels()
            seen.update(dict(zip(lab, h)))
        fig.legend(list(seen.values()), list(seen.keys()), loc="outside lower center", ncol=min(4, len(seen)),
                   fontsize=7, frameon=False)
        fig.suptitle(f"{task}: training loss (smoothed; raw faint), validation (o), divergence (x)", fontsize=9)
        drawn.append(Drawn(f"Loss vs step: {task}", _save(fig, Path(out), f"steps-{task}"),
                           data))
    return drawn


def loss_vs_lr(lr_rows: Sequence[dict], claims: Sequence[dict], out: str | Path, palette: Palette,
               names: Mapping[str, str]) -> list[Drawn]:
    """Per task: final loss vs peak lr (log x), mean over seeds with the min..max over seeds as a band and
    error bars, the best lr starred, x at an lr where a seed diverged."""
    best = {(r["task"], r["optimizer"]): (r.get("best_lr") or {}).get("estimate") for r in claims}
    by_task: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in lr_rows:
        by_task[r["task"]][r["optimizer"]].append(r)
    drawn = []
    for task, per_opt in sorted(by_task.items()):
        longest = max(len(names.get(o, o)) for o in per_opt)  # the legend sits beside the axes: room for it
        fig = Figure(figsize=(7.0 + 0.065 * max(0, longest - 40), 4.6), layout="constrained")
        ax = fig.add_subplot()
        data = {}
        tops = [r["final_max"] for rs in per_opt.values() for r in rs if r["final_max"] is not None]
        top = max(tops) if tops else 1.0
        for opt in sorted(per_opt, key=lambda o: (names.get(o, o) != "AdamW", names.get(o, o))):
            rs = sorted(per_opt[opt], key=lambda r: r["lr"])
            name, col = names.get(opt, opt), palette(names.get(opt, opt))
            ok = [r for r in rs if r["final_mean"] is not None and not r["diverged"]]
            xs, ys = [r["lr"] for r in ok], [r["final_mean"] for r in ok]
            lo, hi = [r["final_min"] for r in ok], [r["final_max"] for r in ok]
            ax.fill_between(xs, lo, hi, color=col, alpha=0.15, lw=0)
            ax.errorbar(xs, ys, yerr=[[y - a for y, a in zip(ys, lo)], [b - y for y, b in zip(ys, hi)]], color=col,
                        marker="o", ms=4, capsize=3, lw=1.4, label=f"{name} ({max((r['seeds'] for r in rs), default=0)} seeds)")
            b = best.get((task, opt))
            if b in xs:
                ax.plot([b], [ys[xs.index(b)]], "*", color=col, ms=16, mec="white", mew=0.8, zorder=10)
            div = [r["lr"] for r in rs if r["diverged"]]
            if div:
                ax.plot(div, [top] * len(div), "x", color=col, ms=9, mew=2, clip_on=False)
            data[name] = {"lr": xs, "mean": ys, "min": lo, "max": hi, "best_lr": b, "diverged_lrs": div}
        ax.set_xscale("log")
        grid = sorted({r["lr"] for rs in per_opt.values() for r in rs})
        _plain_log(ax.xaxis, grid if len(grid) <= 8 else None)  # label the lrs swept, as numbers
        ax.set_xlabel("peak learning rate")
        ax.set_ylabel("final validation loss (nats)")
        fig.suptitle(f"{task}: loss vs lr\nband and bars: min..max over seeds; *: best lr; x: a seed diverged",
                     fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        drawn.append(Drawn(f"Loss vs lr: {task}", _save(fig, Path(out), f"lr-{task}"), data))
    return drawn


_BLOCK = re.compile(r"(?:^|\.)(?:blocks|layers|h|layer)\.(\d+)\.")


def snr_figures(snr_rows: Sequence[dict], c: Collection, out: str | Path, cutoff: float = 1.0) -> list[Drawn]:
    """SNR per layer type and K (bars, log y, cutoff line) per rules source; from each SNR record, SNR of
    the best K against depth (block index) and against training step, per layer type."""
    drawn = []
    by_src: dict[str, list[dict]] = defaultdict(list)
    for r in snr_rows:
        by_src[r["sources"][0]].append(r)
    for src, rows in by_src.items():
        drawn.append(snr_type_bars(rows, out, f"snr-types-{Path(src).stem}", Path(src).name, cutoff))
    for item in c.snr:
        drawn += snr_record_figures(item.data, Path(item.path).stem, out, cutoff)
    return drawn


def snr_type_bars(rows: Sequence[dict], out: str | Path, name: str, source: str, cutoff: float = 1.0,
                  bracket: str = "chosen K") -> Drawn:
    """SNR per layer type and candidate K as bars (log y) with the cutoff drawn; ``rows`` hold
    ``layer_type``, ``chosen`` (named ``bracket`` in the title: the rules' choice, or an experiment's
    best K before any cutoff) and one SNR per role (``fan_out``, ``fan_in``, ``both``; None: not measured)."""
    fig = Figure(figsize=(max(6.0, 0.9 * len(rows) + 2), 4.2), layout="constrained")
    ax = fig.add_subplot()
    width, data = 0.27, {}
    for k, (ro, col) in enumerate(ROLE_COLOURS.items()):
        vals = [r.get(ro) for r in rows]
        xs = [i + (k - 1) * width for i in range(len(rows))]
        ax.bar(xs, [v if v and v > 0 else 0 for v in vals], width, color=col, label=f"K = {ro}")
        data[ro] = vals
    ax.axhline(cutoff, color="black", ls="--", lw=1, label=f"cutoff {cutoff:g}")
    ax.set_xticks(range(len(rows)), [f"{r['layer_type']}\n({r['chosen']})" for r in rows], fontsize=7,
                  rotation=25, ha="right")
    ax.set_yscale("log")
    _plain_log(ax.yaxis)
    ax.set_ylabel("SNR of V along K (mean over steps and layers)")
    ax.set_title(f"SNR per layer type ({bracket} in brackets): {source}", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0), frameon=False)  # never over a bar
    ax.grid(axis="y", alpha=0.3, which="both")
    data["layer_type"] = [r["layer_type"] for r in rows]
    return Drawn(f"SNR per layer type: {source}", _save(fig, Path(out), name), data)


def snr_record_figures(rec, stem: str, out: str | Path, cutoff: float = 1.0, skip_steps: int = 0) -> list[Drawn]:
    """From one SNR record: SNR per layer type and K against depth, and SNR of each layer's best K against
    step. ``skip_steps`` leaves out measured steps <= it from the depth figure's means (an experiment's
    transient, so the figure shows its tables' numbers); the step figure shows every measured step."""
    from slimbench.snr.derive import mean_snr, role
    from slimbench.snr.stats import key_dims

    try:
        means = mean_snr(rec, skip_steps)
    except ValueError:
        return []
    info = {p.name: p for p in rec.params}
    depth: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    steps: dict[str, list[list[float]]] = defaultdict(list)
    for name, per_k in means.items():
        m = _BLOCK.search(name)
        if not per_k:
            continue
        best_k = max(per_k, key=lambda k: per_k[k] if not math.isnan(per_k[k]) else -1)
        t = info[name].layer_type
        if m:
            for k, v in per_k.items():
                try:
                    depth[t][role(key_dims(k), len(info[name].shape))].append((int(m.group(1)), v))
                except ValueError:
                    continue
        steps[t].append([x if x is not None else math.nan for x in rec.snr[name][best_k]])
    drawn = []
    if depth:
        types = sorted(depth)
        cols = min(4, len(types))
        rows = math.ceil(len(types) / cols)
        fig = Figure(figsize=(max(5.0, 3.6 * cols), 3.0 * rows + 0.4), layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False)
        data = {}
        for ax, t in zip(axes.flat, types):
            for k in (r for r in ROLE_COLOURS if r in depth[t]):
                pts = sorted(p for p in depth[t][k] if p[1] > 0)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, color=ROLE_COLOURS[k],
                        label=f"K = {k}")
                data[(t, k)] = pts
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.axhline(cutoff, color="black", ls="--", lw=0.8)
            ax.set_yscale("log")
            _plain_log(ax.yaxis)
            ax.set_title(t, fontsize=9)
            ax.set_xlabel("block index (depth)")
            ax.set_ylabel("SNR")
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=6)
        for ax in list(axes.flat)[len(types):]:
            ax.axis("off")
        fig.suptitle(f"SNR vs depth per layer type and K (dashed: cutoff {cutoff:g}): {stem}", fontsize=9)
        drawn.append(Drawn(f"SNR vs depth: {stem}", _save(fig, Path(out), f"snr-depth-{stem}"), data))
    if steps and len(rec.steps) > 1:
        fig = Figure(figsize=(7.0, 4.4), layout="constrained")
        ax = fig.add_subplot()
        data = {}
        for t in sorted(steps):
            series = steps[t]
            ys = []
            for i in range(len(rec.steps)):
                vals = [s[i] for s in series if i < len(s) and not math.isnan(s[i]) and s[i] > 0]
                ys.append(sum(vals) / len(vals) if vals else math.nan)
            ax.plot(rec.steps, ys, marker="o", ms=3, label=t)
            data[t] = ys
        ax.axhline(cutoff, color="black", ls="--", lw=0.8, label=f"cutoff {cutoff:g}")
        ax.set_yscale("log")
        _plain_log(ax.yaxis)
        ax.set_xlabel("training step")
        ax.set_ylabel("SNR along each layer's best K (mean over layers)")
        ax.set_title(f"SNR vs step: {stem}", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        drawn.append(Drawn(f"SNR vs step: {stem}", _save(fig, Path(out), f"snr-steps-{stem}"),
                           {"steps": list(rec.steps), **data}))
    return drawn


def step_time(sweep_rows: Sequence[dict], fused_rows: Sequence[dict], out: str | Path, palette: Palette,
              names: Mapping[str, str]) -> list[Drawn]:
    """Sweeps: ms per training step and its ratio to AdamW per task and optimizer. Fused suite, per size:
    ms per step, ratio to AdamW of the same kind, GB/s and its share of the same run's copy bandwidth."""
    drawn = []
    tasks = sorted({r["task"] for r in sweep_rows})
    if tasks:
        fig = Figure(figsize=(11.0, max(3.0, 0.35 * len(sweep_rows) + 1.8)))
        ax1, ax2 = fig.subplots(1, 2, sharey=True)
        labels, ms, ratio, cols = [], [], [], []
        sweep_rows_sorted = sorted(sweep_rows, key=lambda r: (r["task"], names.get(r["optimizer"], r["optimizer"])))
        for r in sweep_rows_sorted:
            name = names.get(r["optimizer"], r["optimizer"])
            labels.append(f"{r['task'].split(' ')[0]}: {name}")
            ms.append(1e3 * r["min_s"] if r["min_s"] is not None else 0.0)
            ratio.append(r["ratio"] if r["ratio"] is not None else 0.0)
            cols.append(palette(name))
        ys = range(len(labels))
        ax1.barh(ys, ms, color=cols)
        ax1.set_yticks(list(ys), labels, fontsize=7)
        ax1.invert_yaxis()
        ax1.set_xlabel("fastest training step (ms; median over runs)")
        ax2.barh(ys, ratio, color=cols)
        for y, r in zip(ys, sweep_rows_sorted):
            if r["ratio"] is None:  # never a silent empty bar: say why there is none
                ax2.text(0.02, y, "no AdamW run at the same task, lr and seed", va="center", fontsize=6,
                         color="dimgray")
        ax2.axvline(1.0, color="black", ls="--", lw=1)
        ax2.set_xlabel("step time / AdamW's (same task, lr, seed)")
        for ax in (ax1, ax2):
            ax.grid(axis="x", alpha=0.3)
        fig.suptitle("Training step time in sweeps (batch + forward + backward + optimizer step)", fontsize=9)
        drawn.append(Drawn("Step time: sweeps", _save(fig, Path(out), "step-time-sweeps"),
                           {"labels": labels, "ms": ms, "ratio": ratio}))
    cases = sorted({(str(r["size"]), str(r["dtype"]), r["threads"] or 0, r["sources"][0]) for r in fused_rows})
    for case in cases:
        rs = [r for r in fused_rows if (str(r["size"]), str(r["dtype"]), r["threads"] or 0, r["sources"][0]) == case]
        drawn.append(_fused_figure(rs, Path(out)))
    return drawn


def _fused_figure(rs: Sequence[dict], out: Path) -> Drawn:
    """One size of the fused suite: ms per step, ratio to AdamW of the same kind, effective GB/s with the
    same run's copy GB/s, and (where a copy was timed) each path's GB/s as a percentage of that copy."""
    paths = [r["path"] for r in rs]
    ms = [1e3 * r["min_s"] for r in rs]
    vs = [_nan(r["vs_adamw"]) for r in rs]
    gbps = [_nan(r["gbps"]) for r in rs]
    copy = [r.get("copy_gbps") for r in rs]
    pct = [None if r.get("copy_fraction") is None else 100 * r["copy_fraction"] for r in rs]
    timed = any(c is not None for c in copy)
    fig = Figure(figsize=(16.0 if timed else 12.0, 3.9), layout="constrained")
    axes = fig.subplots(1, 4 if timed else 3)
    cols = ["#000000" if p.startswith("adamw") else COLOURS[i % len(COLOURS)] for i, p in enumerate(paths)]
    panels = [(axes[0], ms, "ms per step (min over rounds)"), (axes[1], vs, "step time / AdamW's of the same kind"),
              (axes[2], gbps, "GB/s (byte model / fastest step)")]
    if timed:
        panels.append((axes[3], [_nan(x) for x in pct], "% of a copy of as many bytes (same rounds)"))
    xs = range(len(paths))
    for ax, ys, lab in panels:
        ax.bar(xs, ys, color=cols)
        ax.set_xticks(list(xs), paths, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel(lab, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_yscale("log")
    _plain_log(axes[0].yaxis)
    axes[1].axhline(1.0, color="black", ls="--", lw=1)
    if timed:
        # the copy as an outline over each path's bar, grey and dashed: visible over a black AdamW bar too
        axes[2].bar([x for x, c in zip(xs, copy) if c is not None], [c for c in copy if c is not None], fill=False,
                    edgecolor="#7f7f7f", ls="--", lw=1.6, zorder=5, label="copy of as many bytes (same rounds)")
        axes[2].set_ylim(0, 1.25 * max(x for x in gbps + [c for c in copy if c is not None] if math.isfinite(x)))
        axes[2].legend(fontsize=7, loc="upper right")
        axes[3].axhline(100.0, color="black", ls="--", lw=1)
        for x, v in zip(xs, pct):
            if v is not None:
                axes[3].annotate(f"{v:.0f}%", (x, v), ha="center", va="bottom", fontsize=7)
    r0 = rs[0]
    note = ("GB/s against a copy timed in the same rounds" if timed else
            "no copy was timed in this file (written before the roofline columns): no share of bandwidth shown")
    fig.suptitle(f"Fused / foreach kernels: {r0['size']} ({r0['n_params']:,} params, {r0['dtype']}, "
                 f"{r0['threads']} thread(s), {r0['device']}). {note}", fontsize=9)
    return Drawn(f"Step time: fused kernels {r0['size']} ({r0['dtype']}, {r0['threads']} threads)",
                 _save(fig, out, f"step-time-fused-{r0['size']}-{r0['dtype']}-{r0['threads']}t"),
                 {"paths": paths, "ms": ms, "vs_adamw": vs, "gbps": gbps, "copy_gbps": copy, "pct_of_copy": pct,
                  "bandwidth_share": timed})


def memory_quality(claims: Sequence[dict], memory_rows: Sequence[dict], out: str | Path, palette: Palette,
                   names: Mapping[str, str]) -> list[Drawn]:
    """Optimizer-state bytes per parameter against the best loss (with its 95% CI) and against the lr-band
    width (log), one point per optimizer per task; tasks by marker."""
    per_param = {}
    for r in memory_rows:
        if r["context"].startswith("sweep ") and r.get("state_bytes") is not None and r.get("n_params"):
            per_param[(r["context"].removeprefix("sweep "), r["optimizer"])] = r["state_bytes"] / r["n_params"]
    pts = [(r, per_param[(r["task"], r["optimizer"])]) for r in claims
           if (r["task"], r["optimizer"]) in per_param and r.get("best_loss")]
    if not pts:
        return []
    markers = "osD^vP*Xh<>"
    tasks = sorted({r["task"].split(" ")[0] for r, _ in pts})
    fig = Figure(figsize=(11.0, 4.4), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2, sharex=True)
    data = []
    for r, bpp in pts:
        name, task = r["name"], r["task"].split(" ")[0]
        col, mk = palette(name), markers[tasks.index(task) % len(markers)]
        bl = r["best_loss"]
        err = [[bl["estimate"] - bl["lo"]], [bl["hi"] - bl["estimate"]]] if bl.get("lo") is not None else None
        ax1.errorbar([bpp], [bl["estimate"]], yerr=err, fmt=mk, color=col, ms=6, capsize=2)
        w = r.get("lr_width")
        if w:
            ax2.plot([bpp], [w["estimate"]], mk, color=col, ms=7)
        data.append({"task": r["task"], "name": name, "bytes_per_param": bpp, "best_loss": bl["estimate"],
                     "lr_width": w["estimate"] if w else None})
    for ax in (ax1, ax2):
        ax.set_xlabel("optimizer state (bytes per parameter)")
        ax.set_xscale("log")
        _plain_log(ax.xaxis)
        ax.grid(alpha=0.3, which="both")
    ax1.set_ylabel("final val loss at own best lr (nats, 95% CI)")
    ax2.set_ylabel("lr-band width within 5% of best (hi/lo)")
    ax2.set_yscale("log")
    _plain_log(ax2.yaxis)
    handles = [ax1.plot([], [], "o", color=palette(n))[0] for n in _order({d["name"] for d in data})]
    handles += [ax1.plot([], [], markers[i % len(markers)], color="grey")[0] for i in range(len(tasks))]
    labels = _order({d["name"] for d in data}) + tasks
    fig.legend(handles, labels, loc="outside right center", fontsize=7, frameon=False)
    fig.suptitle("Memory x quality: state bytes per parameter vs best loss and vs lr robustness "
                 "(one point per optimizer per task; colour: optimizer, marker: task)", fontsize=9)
    return [Drawn("Memory x quality", _save(fig, Path(out), "memory-quality"), {"points": data})]


def _ok(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _nan(y: float | None) -> float:
    return math.nan if y is None else y


def _quantile(vals: Sequence[float], q: float) -> float:
    s = sorted(vals)
    return s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))]
