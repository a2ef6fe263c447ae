"""Loss-vs-lr section: final loss per (task, optimizer, lr) over seeds, the best lr and the lr band
(robustness), and the lr grid that experiments print. The rule that picks the best lr and the band is
:mod:`slimbench.bench.best_lr`; this module lays its answers out."""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from slimbench.bench.best_lr import best_lr, lr_band
from slimbench.report.load import Collection
from slimbench.report.runs import group_runs, optimizer_label, stats, task_label
from slimbench.report.table import Column, Options


def lr_rows(c: Collection, opts: Options = Options()) -> list[dict]:
    """One row per (task, optimizer, lr): seeds aggregated, divergences counted."""
    rows = []
    groups = group_runs(c.runs, lambda r: (task_label(r), optimizer_label(r), r.config.lr))
    for (task, opt, lr), items in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        finals = [i.data.summary.get(opts.loss) for i in items]
        bests = [i.data.summary.get("best_val_loss") for i in items]
        diverged = sum(i.data.status == "diverged" for i in items)
        st = stats(finals)
        rows.append({"task": task, "optimizer": opt, "lr": lr, "seeds": len(items),
                     "seed_list": sorted(i.data.config.seed for i in items), "diverged": diverged,
                     "diverged_text": f"{diverged}/{len(items)}" if diverged else "",
                     "final": (st["mean"], st["std"]), "final_mean": st["mean"], "final_std": st["std"],
                     "final_min": st["min"], "final_max": st["max"], "best_val": stats(bests)["mean"],
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
        means = {r["lr"]: None if r["diverged"] else r["final_mean"] for r in rs}
        best_at = best_lr(means)
        best = next((r for r in rs if r["lr"] == best_at), None)
        lo, hi = lr_band(means, opts.within) or (None, None)
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


LR_COLUMNS = [Column("task", "task"), Column("optimizer", "optimizer"), Column("lr", "lr", "g"),
              Column("final", "final loss (mean ± std)", "pm"), Column("final_min", "min", "f4"),
              Column("final_max", "max", "f4"), Column("best_val", "best val", "f4"),
              Column("seeds", "seeds", "int"), Column("marker", "note")]
LR_SUMMARY_COLUMNS = [Column("task", "task"), Column("optimizer", "optimizer"), Column("best_lr", "best lr", "g"),
                      Column("best", "final loss at best lr", "pm"), Column("seeds", "seeds", "int"),
                      Column("robust_range", "lrs within tol"), Column("robust_width", "width", "x2"),
                      Column("diverged_lrs", "diverged at lr", "lrs"), Column("lrs", "lrs", "int")]
