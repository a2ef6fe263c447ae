"""Comparisons section: every claim the report states, with its seed count and 95% interval.

Per task and optimizer: the loss gap to AdamW at AdamW's best lr (paired t over seeds), the optimizer's
own best lr and the lr-band width (exact seed bootstrap), and the best loss (t). The rules are
:mod:`slimbench.bench.best_lr` and :mod:`slimbench.bench.intervals`; this module lays their answers out.
A gap whose interval spans zero is "within noise".
"""
from __future__ import annotations

from collections.abc import Sequence

from slimbench.bench.best_lr import best_lr, lr_means, lr_width
from slimbench.bench.intervals import Interval, difference_interval, mean_interval, seed_bootstrap
from slimbench.report.load import Collection
from slimbench.report.runs import display_name, group_runs, optimizer_label, rules_names, task_label
from slimbench.report.table import Column, Options

REFERENCE = "adamw"


def _finals(items, loss: str) -> dict[float, dict[int, float | None]]:
    """{lr: {seed: final loss, None if the run diverged}}."""
    out: dict[float, dict[int, float | None]] = {}
    for i in items:
        r = i.data
        out.setdefault(r.config.lr, {})[r.config.seed] = None if r.status == "diverged" else r.summary.get(loss)
    return out


def _resampled(finals: dict[float, dict[int, float | None]], seeds: Sequence[int]) -> dict[float, list]:
    return {lr: [per[s] for s in seeds if s in per] for lr, per in finals.items()}


def _verdict(iv: Interval | None) -> str:
    if iv is None or iv.lo is None:
        return "one seed: no interval"
    if iv.spans_zero:
        return "within noise"
    return "worse than AdamW" if iv.estimate > 0 else "better than AdamW"


def claim_rows(c: Collection, opts: Options = Options()) -> list[dict]:
    """One row per (task, optimizer) of a sweep with more than one lr or seed."""
    names = rules_names(c.rules)
    rows = []
    by_task = group_runs(c.runs, task_label)
    for task in sorted(by_task):
        per_opt = group_runs(by_task[task], optimizer_label)
        finals = {opt: _finals(items, opts.loss) for opt, items in per_opt.items()}
        ref = finals.get(REFERENCE)
        ref_best = best_lr(lr_means({lr: list(per.values()) for lr, per in ref.items()})) if ref else None
        for opt in sorted(per_opt, key=lambda o: (o != REFERENCE, o)):
            f, items = finals[opt], per_opt[opt]
            seeds = sorted({s for per in f.values() for s in per})

            def best_of(ss: Sequence[int], f=f) -> float | None:
                return best_lr(lr_means(_resampled(f, ss)))

            def width_of(ss: Sequence[int], f=f) -> float | None:
                return lr_width(lr_means(_resampled(f, ss)), opts.within)

            best = seed_bootstrap(seeds, best_of)
            width = seed_bootstrap(seeds, width_of) if len(f) > 1 else None
            at_best = {s: v for s, v in f.get(best.estimate, {}).items() if v is not None} if best else {}
            best_loss = mean_interval(list(at_best.values())) if at_best else None
            gap = None
            if opt != REFERENCE and ref_best is not None:
                mine = {s: v for s, v in f.get(ref_best, {}).items() if v is not None}
                theirs = {s: v for s, v in ref[ref_best].items() if v is not None}
                if mine and theirs and len(f.get(ref_best, {})) == len(mine):
                    gap = difference_interval(mine, theirs)
            rows.append({"task": task, "optimizer": opt, "name": display_name(items[0].data, names),
                         "seeds": len(seeds), "lrs": len(f), "adamw_best_lr": ref_best,
                         "gap": gap.to_dict() if gap else None,
                         "verdict": _verdict(gap) if opt != REFERENCE and ref_best is not None else "",
                         "best_lr": best.to_dict() if best else None,
                         "best_loss": best_loss.to_dict() if best_loss else None,
                         "lr_width": width.to_dict() if width else None,
                         "sources": [i.path for i in items]})
    return rows


CLAIM_COLUMNS = [Column("task", "task"), Column("name", "optimizer"), Column("seeds", "seeds", "int"),
                 Column("adamw_best_lr", "AdamW best lr", "g"),
                 Column("gap", "loss gap to AdamW at its best lr [95% CI]", "ci+"), Column("verdict", "verdict"),
                 Column("best_lr", "own best lr [95% bootstrap]", "ci_g"),
                 Column("best_loss", "loss at own best lr [95% CI]", "ci"),
                 Column("lr_width", "lr-band width [95% bootstrap]", "ci_x")]


def claims_note(opts: Options) -> str:
    return (f"{opts.loss} per seed. Gap: mean over seeds of (optimizer - AdamW) at AdamW's best lr, 95% paired t "
            "interval over the seeds both ran (Welch t otherwise); 'within noise' when it spans zero. Best lr and "
            f"lr-band width (contiguous lrs within {100 * opts.within:g}% of the best loss, hi/lo): every resample "
            "of the seeds with replacement, 2.5..97.5 percentiles. Loss at own best lr: mean, 95% t. Two seeds "
            "give t = 12.7: intervals that wide are what two seeds can say.")
