"""Report tables as data: a :class:`Collection` in, rows (dicts of raw values + their source files) out.

Nothing here formats for a terminal or writes a file; :mod:`slimbench.report.markdown` and the CLI render
:class:`Table` objects, :mod:`slimbench.report.plots` draws from the same rows. Every row carries
``sources``: the files its numbers were read from.

Definitions used by the sections (issue 5):

* **task**: a task, preset and its overrides (``gpt/tiny steps=50``); runs of different overrides are
  different experiments and never pooled.
* **final loss**: a run's ``summary[loss]`` (default ``final_val_loss``); a diverged run has none.
  Seeds are aggregated as mean, sample std and min..max over the seeds that finished.
* **best lr**: the lr with the lowest mean final loss among lrs where no seed diverged (a diverged seed
  disqualifies its lr, as :func:`slimbench.bench.sweep.best_lrs`).
* **robustness**: the contiguous range of grid lrs around the best lr whose mean final loss is within
  ``within`` (default 5%) of the best and where no seed diverged; its width is ``hi / lo`` (1.0 = only
  the best lr qualifies). A wider range means a less sensitive optimizer.
* **step ratio**: an optimizer's step time over AdamW(foreach)'s measured in the same run: the
  benchmark's own interleaved reference, or for sweeps the AdamW run of the same task, lr and seed.
"""
from __future__ import annotations

import math
import os
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from slimbench.report.load import Collection, Item

MIB = 2 ** 20


# ---------------------------------------------------------------------------------------------------------
# table objects


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


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def format_value(v: Any, fmt: str = "str") -> str:
    """Cell text: '-' for missing. fmt: str, int, g, g4, f3, f4, mib, x2, pct, ms, bool, lrs, and
    pm / pm+ for a pair (mean, spread) shown as 'mean ± spread' (pm+: the mean signed, for gaps)."""
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
    return str(v)


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


# ---------------------------------------------------------------------------------------------------------
# runs: grouping helpers


def task_label(result) -> str:
    """``task/preset k=v ...``: what makes runs comparable (overrides included, lr/seed/optimizer not)."""
    cfg = result.config
    extra = " ".join(f"{k}={v}" for k, v in sorted(cfg.overrides.items()))
    if cfg.divergence_factor != 3.0:
        extra += f" div>{cfg.divergence_factor:g}x"
    return f"{cfg.task}/{cfg.preset}" + (f" {extra}" if extra else "")


def optimizer_label(result) -> str:
    """Registry name, plus the rules when they are not the optimizer's default."""
    fp = result.optimizer.get("rules_fingerprint") or "none"
    return result.config.optimizer if fp in ("none", "paper") else f"{result.config.optimizer}[{fp}]"


def _group_runs(runs: Iterable[Item], key: Callable) -> dict[Any, list[Item]]:
    out: dict[Any, list[Item]] = defaultdict(list)
    for item in runs:
        out[key(item.data)].append(item)
    return out


def _stats(values: Sequence[float | None]) -> dict:
    vals = [v for v in values if _finite(v)]
    return {"mean": statistics.fmean(vals) if vals else None,
            "std": statistics.stdev(vals) if len(vals) > 1 else None,
            "min": min(vals) if vals else None, "max": max(vals) if vals else None, "n": len(vals)}


# ---------------------------------------------------------------------------------------------------------
# memory


def _bench_entries(c: Collection, kind: str) -> list[tuple[str, dict]]:
    """(source path, benchmark entry) for entries whose extra_info kind is ``kind``."""
    return [(item.path, b) for item in c.benchmarks for b in item.data["benchmarks"]
            if (b.get("extra_info") or {}).get("kind") == kind]


def memory_rows(c: Collection) -> list[dict]:
    """Per context (a benchmark shape, a profiled / audited model, a sweep's task) and optimizer."""
    rows: list[dict] = []
    seen: dict[tuple, dict] = {}

    def add(row: dict) -> None:
        key = (row["context"], row["optimizer"])
        if key in seen:  # the same measurement in several files: one row, every source
            seen[key]["sources"] = sorted(set(seen[key]["sources"]) | set(row["sources"]))
            return
        seen[key] = row
        rows.append(row)

    for path, b in _bench_entries(c, "step_time"):
        e = b["extra_info"]
        add({"context": f"step bench {e.get('shape')} ({e.get('device')}, {e.get('dtype')})",
             "optimizer": e.get("optimizer"), "n_params": e.get("n_params"), "param_bytes": e.get("param_bytes"),
             "state_bytes": e.get("state_bytes"), "saved": e.get("second_moment_saved_fraction"),
             "peak_bytes": e.get("peak_step_bytes"), "transient_bytes": e.get("transient_bytes"),
             "within_budget": e.get("within_transient_budget"), "method": _short_method(e.get("memory_method")),
             "sources": [path]})
    for item in c.profiles:
        d = item.data
        ctx = f"profile {d.get('model')} ({d.get('device')}, {d.get('dtype')}, batch {d.get('batch_size')}x{d.get('seq_len')})"
        for r in d.get("optimizers", []):
            if r.get("status") != "ok":
                add({"context": ctx, "optimizer": r.get("optimizer"), "method": f"skipped: {r.get('reason', '')}"[:60],
                     "sources": [item.path]})
                continue
            add({"context": ctx, "optimizer": r["optimizer"], "param_bytes": r.get("param_bytes"),
                 "state_bytes": r.get("state_bytes"), "saved": r.get("second_moment_saved_fraction"),
                 "peak_bytes": r.get("peak_bytes"), "transient_bytes": r.get("transient_bytes"),
                 "within_budget": r.get("within_budget"), "method": _short_method(r.get("method")),
                 "sources": [item.path]})
    for item in c.audits:
        d = item.data
        ctx = f"audit {d.get('model')} ({d.get('dtype')})"
        for r in d.get("optimizers", []):
            if r.get("status") != "ok":
                continue
            add({"context": ctx, "optimizer": r["optimizer"], "n_params": d.get("param_numel"),
                 "param_bytes": r.get("param_bytes"), "state_bytes": r.get("state_bytes"),
                 "saved": r.get("second_moment_saved_fraction"), "method": "meta device (no allocation)",
                 "sources": [item.path]})
    for (task, opt), items in _group_runs(c.runs, lambda r: (task_label(r), optimizer_label(r))).items():
        mem = next((i.data.memory for i in items if i.data.memory), None)
        if not mem:
            continue
        add({"context": f"sweep {task}", "optimizer": opt, "n_params": mem.get("param_numel"),
             "param_bytes": mem.get("param_bytes"), "state_bytes": mem.get("state_bytes"),
             "saved": mem.get("second_moment_saved_fraction"), "method": "ledger after step 1",
             "sources": [items[0].path]})
    by_ctx = defaultdict(dict)
    for r in rows:
        by_ctx[r["context"]][r["optimizer"]] = r
    for r in rows:
        if _finite(r.get("state_bytes")) and _finite(r.get("param_bytes")) and r["param_bytes"]:
            r["ratio"] = r["state_bytes"] / r["param_bytes"]
        ref = by_ctx[r["context"]].get("adamw")
        if ref and _finite(r.get("state_bytes")) and ref.get("state_bytes"):
            r["vs_adamw"] = r["state_bytes"] / ref["state_bytes"]
    return rows


def _short_method(method: str | None) -> str | None:
    return method.split(":")[0] + (" (allocator)" if method.startswith("cuda") else " (dispatch tracker)") \
        if method else None


MEMORY_COLUMNS = [Column("context", "context"), Column("optimizer", "optimizer"),
                  Column("state_bytes", "state MiB", "mib"), Column("ratio", "x params", "x2"),
                  Column("vs_adamw", "vs AdamW", "x2"), Column("saved", "V saved", "pct"),
                  Column("peak_bytes", "peak MiB", "mib"), Column("transient_bytes", "step transient MiB", "mib"),
                  Column("within_budget", "in budget", "bool"), Column("method", "method")]


# ---------------------------------------------------------------------------------------------------------
# loss vs learning rate


def lr_rows(c: Collection, opts: Options = Options()) -> list[dict]:
    """One row per (task, optimizer, lr): seeds aggregated, divergences counted."""
    rows = []
    groups = _group_runs(c.runs, lambda r: (task_label(r), optimizer_label(r), r.config.lr))
    for (task, opt, lr), items in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        finals = [i.data.summary.get(opts.loss) for i in items]
        bests = [i.data.summary.get("best_val_loss") for i in items]
        diverged = sum(i.data.status == "diverged" for i in items)
        st = _stats(finals)
        rows.append({"task": task, "optimizer": opt, "lr": lr, "seeds": len(items),
                     "seed_list": sorted(i.data.config.seed for i in items), "diverged": diverged,
                     "diverged_text": f"{diverged}/{len(items)}" if diverged else "",
                     "final": (st["mean"], st["std"]), "final_mean": st["mean"], "final_std": st["std"],
                     "final_min": st["min"], "final_max": st["max"], "best_val": _stats(bests)["mean"],
                     "sources": [i.path for i in items]})
    best = {(s["task"], s["optimizer"]): s["best_lr"] for s in lr_summary_rows(rows, opts)}
    for r in rows:
        r["marker"] = ("best" if best.get((r["task"], r["optimizer"])) == r["lr"] else "") + \
                      (f" diverged {r['diverged_text']}" if r["diverged"] else "")
        r["marker"] = r["marker"].strip()
    return rows


def lr_summary_rows(rows: Sequence[dict], opts: Options = Options()) -> list[dict]:
    """Per (task, optimizer): best lr, its loss and spread, robustness range, diverged lrs."""
    out = []
    by: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        by[(r["task"], r["optimizer"])].append(r)
    for (task, opt), rs in by.items():
        rs = sorted(rs, key=lambda r: r["lr"])
        ok = [r for r in rs if not r["diverged"] and r["final_mean"] is not None]
        best = min(ok, key=lambda r: r["final_mean"]) if ok else None
        lo = hi = None
        if best is not None:
            limit = best["final_mean"] + opts.within * abs(best["final_mean"])
            good = [(not r["diverged"]) and r["final_mean"] is not None and r["final_mean"] <= limit for r in rs]
            i = rs.index(best)
            a = b = i
            while a > 0 and good[a - 1]:
                a -= 1
            while b < len(rs) - 1 and good[b + 1]:
                b += 1
            lo, hi = rs[a]["lr"], rs[b]["lr"]
        out.append({"task": task, "optimizer": opt, "lrs": len(rs),
                    "best_lr": best["lr"] if best else None,
                    "best": (best["final_mean"], best["final_std"]) if best else (None, None),
                    "best_loss": best["final_mean"] if best else None,
                    "best_std": best["final_std"] if best else None,
                    "seeds": best["seeds"] if best else 0,
                    "robust_lo": lo, "robust_hi": hi,
                    "robust_range": f"{lo:g} .. {hi:g}" if lo is not None else None,
                    "robust_width": hi / lo if lo else None,
                    "diverged_lrs": [r["lr"] for r in rs if r["diverged"]],
                    "sources": sorted({p for r in rs for p in r["sources"]})})
    return out


def half_range(row: dict) -> float | None:
    """Half the min..max range of an lr row's final loss over its seeds; None for one seed or a divergence."""
    if row["seeds"] < 2 or row["diverged"] or row["final_min"] is None:
        return None
    return (row["final_max"] - row["final_min"]) / 2


def lr_grid_rows(rows: Sequence[dict], lrs: Sequence[float]) -> list[dict]:
    """Loss vs lr as a grid: one row per (task, optimizer) of :func:`lr_rows`, one cell per lr in ``lrs``.

    A cell ``lr<lr:g>`` is (mean final loss, :func:`half_range`) over seeds (format 'pm'), 'diverged' when
    a seed diverged (a diverged seed disqualifies its lr, as for the best lr) and 'not run' without runs.
    Rows keep the order of ``rows``.
    """
    grid: dict[tuple[str, str], dict] = {}
    for r in rows:
        g = grid.setdefault((r["task"], r["optimizer"]), {"task": r["task"], "optimizer": r["optimizer"],
                                                         "sources": []})
        g["sources"] = g["sources"] + r["sources"]
        if r["lr"] in lrs:
            g[lr_key(r["lr"])] = "diverged" if r["diverged"] else (r["final_mean"], half_range(r))
    for g in grid.values():
        for lr in lrs:
            g.setdefault(lr_key(lr), "not run")
    return list(grid.values())


def lr_key(lr: float) -> str:
    """The row key of an lr's cell in :func:`lr_grid_rows`."""
    return f"lr{lr:g}"


def lr_grid_columns(lrs: Sequence[float], label: str = "optimizer") -> list[Column]:
    return [Column("optimizer", label)] + [Column(lr_key(lr), f"lr {lr:g}", "pm") for lr in lrs]


# ---------------------------------------------------------------------------------------------------------
# loss vs step


def default_steps(n: int, k: int = 5) -> list[int]:
    """k evenly spaced steps from 0 to n - 1."""
    if n <= 0:
        return [0]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def step_tables(c: Collection, opts: Options = Options()) -> list[Table]:
    """Per task and lr: training loss at chosen steps per optimizer (mean over seeds), final loss."""
    tables = []
    by_task = _group_runs(c.runs, task_label)
    for task in sorted(by_task):
        items = by_task[task]
        n = max(len(i.data.train_loss) for i in items)
        steps = list(opts.steps) if opts.steps else default_steps(n)
        rows = []
        groups = _group_runs(items, lambda r: (r.config.lr, optimizer_label(r)))
        for (lr, opt), its in sorted(groups.items()):
            row: dict[str, Any] = {"lr": lr, "optimizer": opt, "seeds": len(its), "sources": [i.path for i in its]}
            for s in steps:
                vals = [i.data.train_loss[s] for i in its if s < len(i.data.train_loss)]
                div = [i.data.summary["diverged_step"] for i in its if i.data.status == "diverged"
                       and i.data.summary["diverged_step"] is not None and i.data.summary["diverged_step"] <= s]
                st = _stats(vals)
                row[f"s{s}"] = f"div@{min(div)}" if div and st["n"] == 0 else st["mean"]
            row["final"] = _stats([i.data.summary.get(opts.loss) for i in its])["mean"]
            row["status"] = ", ".join(sorted({i.data.status for i in its}))
            rows.append(row)
        cols = [Column("lr", "lr", "g"), Column("optimizer", "optimizer")] + \
               [Column(f"s{s}", f"step {s}", "f4") for s in steps] + \
               [Column("final", opts.loss.replace("_", " "), "f4"), Column("status", "status"),
                Column("seeds", "seeds", "int")]
        tables.append(Table(f"Loss vs step: {task}", cols, rows,
                            "training loss at each step (mean over seeds; div@s: every seed diverged by step s)"))
    return tables


# ---------------------------------------------------------------------------------------------------------
# training suite (pytest-benchmark kind "training")


def training_rows(c: Collection) -> list[dict]:
    rows = []
    for path, b in _bench_entries(c, "training"):
        e = b["extra_info"]
        losses = e.get("loss_at_step") or {}
        rows.append({"task": f"{e.get('task')}/{e.get('preset')}", "optimizer": e.get("optimizer"),
                     "lr": e.get("lr"), "steps": e.get("steps"),
                     "loss_at": ", ".join(f"{k}: {v:.3f}" if _finite(v) else f"{k}: -" for k, v in losses.items()),
                     "final_val_loss": e.get("final_val_loss"), "diverged": e.get("diverged"),
                     "state_bytes": e.get("state_bytes"), "wall_s": b["stats"].get("min"),
                     "sources": [path]})
    return rows


TRAINING_COLUMNS = [Column("task", "task"), Column("optimizer", "optimizer"), Column("lr", "lr", "g"),
                    Column("steps", "steps", "int"), Column("loss_at", "train loss at step"),
                    Column("final_val_loss", "final val", "f4"), Column("diverged", "diverged", "bool"),
                    Column("state_bytes", "state MiB", "mib"), Column("wall_s", "wall s", "f2")]


# ---------------------------------------------------------------------------------------------------------
# SNR and rules


def _roles_of(snr: dict, ndim: int) -> dict[str, float]:
    """{role: snr} from a {dims key: snr} map ('0', '1', '0,1') or a {role: snr} map."""
    from slimbench.snr.derive import ROLES, role
    from slimbench.snr.stats import key_dims

    out = {}
    for k, v in snr.items():
        if k in ROLES:
            out[k] = v
            continue
        try:
            out[role(key_dims(k), ndim)] = v
        except ValueError:
            continue
    return out


def _mean_or_none(vals: list) -> float | None:
    vals = [float(v) for v in vals if isinstance(v, (int, float)) and not math.isnan(float(v))]
    return statistics.fmean(vals) if vals else None


def snr_rows(c: Collection, cutoff: float = 1.0) -> list[dict]:
    """Per rules file (or SNR record without one) and layer type: mean SNR per role, chosen K, provenance."""
    from slimbench.snr.derive import derive_rules

    rows: list[dict] = []
    used_snr: set[str] = set()
    for item in c.rules:
        rs = item.data
        prov = rs.provenance or {}
        snr_file = prov.get("snr_file")
        if snr_file:  # by path, and by name for a report run from another folder than the rules command
            used_snr.update({_norm(snr_file), os.path.basename(snr_file)})
        commit = (prov.get("snr_provenance") or {}).get("commit") or prov.get("commit")
        origin = f"rules {rs.by}, cutoff {rs.cutoff if rs.cutoff is not None else '-'}"
        per_type: dict[str, dict[str, Any]] = {}
        for e in rs.entries:
            if rs.by == "layer_type":
                t = e.get("match")
                roles = _roles_of(e.get("snr") or {}, 2)
                chosen = [e.get("dims") if isinstance(e.get("dims"), str) else str(e.get("dims"))]
                n = len(e.get("layers") or []) or None
            else:
                t = e.get("layer_type") or "?"
                shape = e.get("shape") or [0, 0]
                roles = _roles_of(e.get("snr") or {}, len(shape))
                dims = e.get("dims")
                chosen = [_role_label(dims, len(shape))]
                n = 1
            slot = per_type.setdefault(t, {"snr": defaultdict(list), "chosen": [], "n": 0})
            for r, v in roles.items():
                slot["snr"][r].append(v)
            slot["chosen"].extend(chosen)
            slot["n"] += n or 0
        for t, slot in per_type.items():
            rows.append(_snr_row(t, slot, origin, item.path, snr_file, commit))
    for item in c.snr:
        if _norm(item.path) in used_snr or os.path.basename(item.path) in used_snr:
            continue
        try:
            derived = derive_rules(item.data, cutoff, depth_average=True)
        except ValueError:
            continue
        commit = (item.data.provenance or {}).get("commit")
        for tr in derived.types:
            slot = {"snr": {r: [v] for r, v in tr.snr.items()}, "chosen": [tr.choice or "none"], "n": len(tr.layers)}
            rows.append(_snr_row(tr.layer_type, slot, f"derived here (depth-averaged, cutoff {cutoff:g})",
                                 item.path, item.path, commit))
    return rows


def _norm(path: str) -> str:
    return os.path.normpath(os.path.abspath(path))


def _role_label(dims: Any, ndim: int) -> str:
    from slimbench.snr.derive import role

    if isinstance(dims, str):
        return dims
    if not dims:
        return "none"
    try:
        return role(tuple(int(d) for d in dims), ndim)
    except ValueError:
        return str(list(dims))


def _snr_row(layer_type: str, slot: dict, origin: str, path: str, snr_file: str | None, commit: str | None) -> dict:
    counts: dict[str, int] = defaultdict(int)
    for ch in slot["chosen"]:
        counts[ch] += 1
    chosen = ", ".join(k if len(counts) == 1 else f"{k} ({v})" for k, v in sorted(counts.items()))
    snr = {r: _mean_or_none(v) for r, v in slot["snr"].items()}
    sources = [path] + ([snr_file] if snr_file and _norm(snr_file) != _norm(path) else [])
    return {"layer_type": layer_type, "layers": slot["n"] or None, "fan_out": snr.get("fan_out"),
            "fan_in": snr.get("fan_in"), "both": snr.get("both"), "chosen": chosen, "origin": origin,
            "commit": (commit or "")[:12] or None, "sources": sources}


SNR_COLUMNS = [Column("layer_type", "layer type"), Column("layers", "layers", "int"),
               Column("fan_out", "SNR fan_out", "f3"), Column("fan_in", "SNR fan_in", "f3"),
               Column("both", "SNR both", "f3"), Column("chosen", "chosen K"), Column("origin", "rules"),
               Column("commit", "commit")]


# ---------------------------------------------------------------------------------------------------------
# step time


def step_time_rows(c: Collection) -> list[dict]:
    """Benchmarks (kind step_time): time of one step and its ratio to AdamW(foreach) in the same test."""
    rows = []
    for path, b in _bench_entries(c, "step_time"):
        e, st = b["extra_info"], b["stats"]
        rows.append({"group": b.get("group") or e.get("shape"), "optimizer": e.get("optimizer"),
                     "foreach": e.get("foreach"), "device": e.get("device"), "threads": e.get("threads"),
                     "min_s": st.get("min"), "median_s": st.get("median"), "rounds": st.get("rounds"),
                     "ratio": e.get("ratio_to_adamw_foreach"), "ratio_median": e.get("ratio_to_adamw_foreach_median"),
                     "target_met": e.get("target_met"), "sources": [path]})
    return rows


STEP_COLUMNS = [Column("group", "case"), Column("optimizer", "optimizer"), Column("foreach", "foreach"),
                Column("min_s", "min ms", "ms"), Column("median_s", "median ms", "ms"), Column("rounds", "rounds", "int"),
                Column("ratio", "vs AdamW foreach (min)", "x2"), Column("ratio_median", "(median)", "x2"),
                Column("device", "device"), Column("threads", "threads", "int")]


def _fused_entries(c: Collection) -> list[tuple[str, dict]]:
    """One (source, extra_info) per (file, size): every test of a size carries the same comparison."""
    out, seen = [], set()
    for path, b in _bench_entries(c, "fused_step"):
        e = b["extra_info"]
        if (path, e.get("size"), e.get("threads")) not in seen:
            seen.add((path, e.get("size"), e.get("threads")))
            out.append((path, e))
    return out


def _fused_case(e: dict, source: str) -> dict:
    """The fields every fused-suite row starts with: which case, where, and the file it came from."""
    return {"size": e.get("size"), "threads": e.get("threads"), "device": e.get("device"), "dtype": e.get("dtype"),
            "sources": [source]}


def _reference_path(path: str) -> str:
    """The AdamW path a SlimAdam path is compared with: fused with fused, everything else with foreach."""
    return "adamw_fused" if path.endswith(("_fused", "_compiled")) else "adamw_foreach"


def fused_rows(c: Collection) -> list[dict]:
    """The fused-kernel suite (kind fused_step): one row per size and path, from its interleaved comparison.

    ``vs AdamW`` divides by the AdamW path of the same kind measured in the same rounds (fused SlimAdam
    by fused AdamW, the others by foreach AdamW), minima over minima as the suite does."""
    rows = []
    for path, e in _fused_entries(c):
        ms_all = e.get("ms_per_step") or {}
        transient = e.get("transient_bytes") if isinstance(e.get("transient_bytes"), dict) else {}
        for p, ms in ms_all.items():
            ref = ms_all.get(_reference_path(p), {}) if p.startswith("slimadam") else {}
            rows.append({**_fused_case(e, path), "path": p, "n_params": e.get("n_params"),
                         "min_s": ms.get("min", math.nan) / 1e3, "median_s": ms.get("median", math.nan) / 1e3,
                         "vs_adamw": ms.get("min", math.nan) / ref["min"] if ref.get("min") else None,
                         "gbps": (e.get("effective_GBps") or {}).get(p),
                         "state_bytes": (e.get("state_bytes") or {}).get(p), "transient_bytes": transient.get(p)})
    return rows


FUSED_COLUMNS = [Column("size", "size"), Column("path", "path"), Column("n_params", "params", "int"),
                 Column("device", "device"), Column("dtype", "dtype"), Column("threads", "threads", "int"),
                 Column("min_s", "min ms", "ms"), Column("median_s", "median ms", "ms"),
                 Column("vs_adamw", "vs AdamW (same kind)", "x2"), Column("gbps", "effective GB/s", "f2"),
                 Column("state_bytes", "state MiB", "mib"), Column("transient_bytes", "transient MiB", "mib")]


def fused_target_rows(c: Collection) -> list[dict]:
    """The issue's targets per size: each measured ratio against its target, and the one-off build costs."""
    rows = []
    for path, e in _fused_entries(c):
        ratios = e.get("ratio") or {}
        transient = e.get("transient_bytes") if isinstance(e.get("transient_bytes"), dict) else {}
        for name, met in (e.get("targets_met") or {}).items():
            r = ratios.get(name, {})
            if name.startswith("transient "):  # "transient a<=b": show both byte counts
                a, b = name.removeprefix("transient ").split("<=")
                r = {"min": f"{transient.get(a, '-')} B vs {transient.get(b, '-')} B"}
            rows.append({**_fused_case(e, path), "target": name, "ratio": r.get("min"),
                         "ratio_median": r.get("median"), "limit": met.get("target"), "met": met.get("met"),
                         "compile_s": e.get("compile_s"), "native_build_s": e.get("native_build_s")})
    return rows


FUSED_TARGET_COLUMNS = [Column("size", "size"), Column("device", "device"), Column("dtype", "dtype"),
                        Column("threads", "threads", "int"),
                        Column("target", "ratio (or transient check)"), Column("ratio", "measured (min)", "x2"),
                        Column("ratio_median", "(median)", "x2"), Column("limit", "target", "x2"),
                        Column("met", "met", "bool"), Column("compile_s", "compile s (cold)", "f2"),
                        Column("native_build_s", "native build s", "f2")]


def sweep_step_rows(c: Collection) -> list[dict]:
    """Sweeps: training-step time per optimizer (median and fastest step, medians over runs), and its
    ratio to the AdamW run of the same task, lr and seed: fastest step over fastest step (the stable
    statistic on shared cores), median over the matched pairs. Whole steps: batch, forward, backward, step."""
    from slimbench.report.compare import min_step_time

    runs = {(task_label(i.data), i.data.config.lr, i.data.config.seed, optimizer_label(i.data)): i for i in c.runs}
    rows = []
    for (task, opt), items in sorted(_group_runs(c.runs, lambda r: (task_label(r), optimizer_label(r))).items()):
        medians = [t for t in (i.data.summary.get("median_step_time_s") for i in items) if _finite(t)]
        mins = [t for t in (min_step_time(i.data) for i in items) if _finite(t)]
        ratios = []
        for i in items:
            ref = runs.get((task, i.data.config.lr, i.data.config.seed, "adamw"))
            t, rt = min_step_time(i.data), ref and min_step_time(ref.data)
            if _finite(t) and _finite(rt) and rt:
                ratios.append(t / rt)
        rows.append({"task": task, "optimizer": opt, "runs": len(items),
                     "median_s": statistics.median(medians) if medians else None,
                     "min_s": statistics.median(mins) if mins else None,
                     "ratio": statistics.median(ratios) if ratios else None, "pairs": len(ratios),
                     "sources": [i.path for i in items]})
    return rows


SWEEP_STEP_COLUMNS = [Column("task", "task"), Column("optimizer", "optimizer"), Column("runs", "runs", "int"),
                      Column("median_s", "median ms/step", "ms"), Column("min_s", "fastest ms", "ms"),
                      Column("ratio", "vs AdamW same lr+seed (fastest)", "x2"),
                      Column("pairs", "pairs", "int")]


# ---------------------------------------------------------------------------------------------------------
# environment


_ENV_KEYS = ("slimbench", "torch", "python", "platform", "device", "threads", "cpu_count", "commit")


def _env_from_provenance(p: dict) -> dict:
    v = p.get("versions") or {}
    return {"slimbench": v.get("slimbench"), "torch": v.get("torch"), "python": p.get("python"),
            "platform": p.get("platform"), "device": " ".join(x for x in (p.get("device"), p.get("device_name")) if x),
            "threads": p.get("threads"), "cpu_count": p.get("cpu_count"), "commit": p.get("commit")}


def environment_rows(c: Collection) -> list[dict]:
    """Distinct environments over all sources, each with the files measured in it."""
    envs: list[tuple[str, dict, str]] = []  # (kind, env, path)
    for i in c.runs:
        envs.append(("sweep run", _env_from_provenance(i.data.env), i.path))
    for i in c.snr:
        envs.append(("snr", _env_from_provenance(i.data.provenance or {}), i.path))
    for i in c.rules:
        prov = (i.data.provenance or {}).get("snr_provenance") or {}
        if prov:
            envs.append(("rules (its SNR run)", _env_from_provenance(prov), i.path))
    for i in c.profiles:
        envs.append(("profile", _env_from_provenance(i.data.get("provenance") or {}), i.path))
    for i in c.audits:
        envs.append(("audit", _env_from_provenance(i.data.get("provenance") or {}), i.path))
    for i in c.benchmarks:
        m, ci = i.data.get("machine_info") or {}, i.data.get("commit_info") or {}
        first = next((b.get("extra_info") or {} for b in i.data["benchmarks"]), {})
        commit = ci.get("id")
        if commit and ci.get("dirty"):
            commit += "+dirty"
        cpu = (m.get("cpu") or {}).get("brand_raw") or m.get("processor") or m.get("machine")
        envs.append(("pytest-benchmark", {"slimbench": first.get("slimbench"), "torch": first.get("torch"),
                                          "python": m.get("python_version"),
                                          "platform": m.get("platform"),
                                          "device": " ".join(str(x) for x in (first.get("device"), cpu) if x),
                                          "threads": first.get("threads"), "cpu_count": (m.get("cpu") or {}).get("count"),
                                          "commit": commit}, i.path))
    rows: list[dict] = []
    index: dict[tuple, dict] = {}
    for kind, env, path in envs:
        key = (kind,) + tuple(env.get(k) for k in _ENV_KEYS)
        if key not in index:
            index[key] = {"kind": kind, **env, "files": 0, "sources": []}
            rows.append(index[key])
        index[key]["files"] += 1
        index[key]["sources"].append(path)
    return rows


ENV_COLUMNS = [Column("kind", "source"), Column("files", "files", "int"), Column("slimbench", "slimbench"),
               Column("torch", "torch"), Column("python", "python"), Column("device", "device"),
               Column("threads", "threads"), Column("cpu_count", "cpus"), Column("commit", "commit"),
               Column("platform", "platform")]


# ---------------------------------------------------------------------------------------------------------
# all sections


LR_COLUMNS = [Column("task", "task"), Column("optimizer", "optimizer"), Column("lr", "lr", "g"),
              Column("final", "final loss (mean ± std)", "pm"), Column("final_min", "min", "f4"),
              Column("final_max", "max", "f4"), Column("best_val", "best val", "f4"),
              Column("seeds", "seeds", "int"), Column("marker", "note")]
LR_SUMMARY_COLUMNS = [Column("task", "task"), Column("optimizer", "optimizer"), Column("best_lr", "best lr", "g"),
                      Column("best", "final loss at best lr", "pm"), Column("seeds", "seeds", "int"),
                      Column("robust_range", "lrs within tol"), Column("robust_width", "width", "x2"),
                      Column("diverged_lrs", "diverged at lr", "lrs"), Column("lrs", "lrs", "int")]


def build_sections(c: Collection, opts: Options = Options()) -> list[Section]:
    """Every report section that has data (a section without data says what would fill it)."""
    secs = []
    mem = memory_rows(c)
    secs.append(Section("memory", "Memory", [Table("Optimizer state and step memory", MEMORY_COLUMNS, mem,
                        "state: the ledger's measured bytes; x params: state / parameter bytes; V saved: share of "
                        "Adam's second moments not held; peak: params + grads + state + step transient")] if mem else [],
                        "" if mem else "No step benchmarks, profiles, audits or sweep runs given."))
    lrs = lr_rows(c, opts)
    summary = lr_summary_rows(lrs, opts)
    secs.append(Section("lr", "Loss vs learning rate", [
        Table("Best learning rate and robustness", LR_SUMMARY_COLUMNS, summary,
              f"robustness: contiguous lrs around the best whose mean {opts.loss} is within "
              f"{100 * opts.within:g}% of the best, none diverged; width = hi / lo"),
        Table("Final loss per learning rate", LR_COLUMNS, lrs,
              f"{opts.loss} over seeds that finished; 'diverged k/n': k of n seeds diverged")] if lrs else [],
        "" if lrs else "No sweep results given (python -m slimbench run ...)."))
    steps = step_tables(c, opts)
    secs.append(Section("steps", "Loss vs step", steps, "" if steps else "No sweep results given."))
    train = training_rows(c)
    if train:
        secs.append(Section("training", "Short training runs (pytest suites)",
                            [Table("Training suite", TRAINING_COLUMNS, train)]))
    snr = snr_rows(c)
    secs.append(Section("snr", "SNR per layer type", [Table("Mean SNR per candidate K and the chosen K", SNR_COLUMNS, snr,
                        "SNR averaged over the measured steps and over the layers of each type; chosen K from "
                        "the rules file (with its cutoff) or derived here")] if snr else [],
                        "" if snr else "No SNR records or rules files given (python -m slimbench snr / rules)."))
    st, fused, sweep = step_time_rows(c), fused_rows(c), sweep_step_rows(c)
    tables = []
    if st:
        tables.append(Table("Optimizer step (pytest suites)", STEP_COLUMNS, st,
                            "one steady-state step; AdamW(foreach) timed in the same test between rounds; "
                            "the adamw row's ratio shows the session's noise"))
    if fused:
        tables.append(Table("Fused / foreach kernels (pytest suites)", FUSED_COLUMNS, fused,
                            "interleaved rounds, minimum per path; effective GB/s = the step's minimal traffic "
                            "(AdamW 7 bytes-of-dtype per parameter, SlimAdam 5 plus its reduced V) over its time"))
        tables.append(Table("Fused kernel targets (issue 7)", FUSED_TARGET_COLUMNS, fused_target_rows(c),
                            "targets are reported, never asserted: fused SlimAdam <= 1.0x fused AdamW, foreach "
                            "SlimAdam <= 0.75x foreach AdamW, transient no larger than AdamW's"))
    if sweep:
        tables.append(Table("Training step in sweeps", SWEEP_STEP_COLUMNS, sweep,
                            "batch + forward + backward + step; noisy on shared cores"))
    secs.append(Section("step_time", "Step time", tables, "" if tables else "No benchmark JSON or sweep results given."))
    env = environment_rows(c)
    secs.append(Section("environment", "Environment", [Table("Where the numbers were measured", ENV_COLUMNS, env)]
                        if env else []))
    return secs
