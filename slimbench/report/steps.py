"""Loss-vs-step section: training loss at chosen steps per task, lr and optimizer (mean over seeds)."""
from __future__ import annotations

from typing import Any

from slimbench.report.load import Collection
from slimbench.report.runs import group_runs, optimizer_label, stats, task_label
from slimbench.report.table import Column, Options, Table


def default_steps(n: int, k: int = 5) -> list[int]:
    """k evenly spaced steps from 0 to n - 1."""
    if n <= 0:
        return [0]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def step_tables(c: Collection, opts: Options = Options()) -> list[Table]:
    """Per task and lr: training loss at chosen steps per optimizer (mean over seeds), final loss."""
    tables = []
    by_task = group_runs(c.runs, task_label)
    for task in sorted(by_task):
        items = by_task[task]
        n = max(len(i.data.train_loss) for i in items)
        steps = list(opts.steps) if opts.steps else default_steps(n)
        rows = []
        groups = group_runs(items, lambda r: (r.config.lr, optimizer_label(r)))
        for (lr, opt), its in sorted(groups.items()):
            row: dict[str, Any] = {"lr": lr, "optimizer": opt, "seeds": len(its), "sources": [i.path for i in its]}
            for s in steps:
                vals = [i.data.train_loss[s] for i in its if s < len(i.data.train_loss)]
                div = [i.data.summary["diverged_step"] for i in its if i.data.status == "diverged"
                       and i.data.summary["diverged_step"] is not None and i.data.summary["diverged_step"] <= s]
                st = stats(vals)
                row[f"s{s}"] = f"div@{min(div)}" if div and st["n"] == 0 else st["mean"]
            row["final"] = stats([i.data.summary.get(opts.loss) for i in its])["mean"]
            row["status"] = ", ".join(sorted({i.data.status for i in its}))
            rows.append(row)
        cols = [Column("lr", "lr", "g"), Column("optimizer", "optimizer")] + \
               [Column(f"s{s}", f"step {s}", "f4") for s in steps] + \
               [Column("final", opts.loss.replace("_", " "), "f4"), Column("status", "status"),
                Column("seeds", "seeds", "int")]
        tables.append(Table(f"Loss vs step: {task}", cols, rows,
                            "training loss at each step (mean over seeds; div@s: every seed diverged by step s)"))
    return tables
