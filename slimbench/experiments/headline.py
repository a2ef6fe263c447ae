"""(5) Headline: lr sweeps of SlimAdam and the low-memory baselines on four tasks (gpt, cnn, finetune, vit).

Per task: an AdamW proxy run at a small lr gives SlimAdam's rules (cutoff 1, per parameter); every optimizer
is swept over lrs and seeds; the tables give loss vs lr, the best lr, the gap to AdamW there and at AdamW's
best lr, the lr width within 5% of the best, and the measured optimizer state.
"""
from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

from slimbench.bench.results import RunResult
from slimbench.experiments.common import display_names, labelled_lr_rows, pairs, report_figures, state_bytes
from slimbench.experiments.engine import Analysis, Context
from slimbench.experiments.steps import RulesStep, SNRStep, Step, SweepStep
from slimbench.registry import get_spec as optimizer_spec
from slimbench.report.load import Collection
from slimbench.report.lr import lr_grid_columns, lr_grid_rows, lr_key, lr_summary_rows
from slimbench.report.table import Column, Table, table_from_lists


HEADLINE_OPTIMIZERS = ("adamw", "slimadam", "adalayer", "adalayer+ln+tl", "adam-mini", "adafactor", "lion", "sm3")


def no_weight_decay(optimizers: tuple[str, ...]) -> tuple[str, ...]:
    """Those the registry builds without weight decay (its spec flag; SM3 has none): they run in a sweep
    of their own with weight_decay 0, under the key ``<task>-<their names>``."""
    return tuple(o for o in optimizers if not optimizer_spec(o).weight_decay)


def _sweep_key(task: str, optimizers: tuple[str, ...]) -> str:
    return f"{task}-{'-'.join(optimizers)}"


@dataclass(frozen=True)
class HeadlineTask:
    task: str
    lrs: tuple[float, ...]
    steps: int
    seeds: tuple[int, ...]
    proxy_lr: float  # ~10x below the lr range's centre (paper: rules from a small-lr proxy run)


HEADLINE_FULL = (
    HeadlineTask("gpt", (3e-4, 1e-3, 3e-3, 1e-2, 3e-2), 300, (0, 1), 3e-4),
    HeadlineTask("cnn", (1e-3, 3e-3, 1e-2, 3e-2, 1e-1), 200, (0, 1), 1e-3),
    HeadlineTask("finetune", (1e-4, 3e-4, 1e-3, 3e-3, 1e-2), 200, (0, 1), 1e-4),
    HeadlineTask("vit", (3e-4, 1e-3, 3e-3, 1e-2, 3e-2), 200, (0, 1), 3e-4),
)
HEADLINE_QUICK = (HeadlineTask("gpt", (1e-3, 1e-2), 20, (0,), 1e-4),)


def plan_headline(quick: bool) -> list[Step]:
    out: list[Step] = []
    optimizers = ("adamw", "slimadam", "adalayer") if quick else HEADLINE_OPTIMIZERS
    plain = no_weight_decay(optimizers)
    decayed = tuple(o for o in optimizers if o not in plain)
    for h in (HEADLINE_QUICK if quick else HEADLINE_FULL):
        out.append(SNRStep(f"{h.task}-proxy", h.task, lr=h.proxy_lr, steps=h.steps, every=10 if quick else 25))
        out.append(RulesStep(f"{h.task}-proxy", f"{h.task}-proxy", cutoff=1.0))
        out.append(SweepStep(h.task, h.task, decayed, h.lrs, h.seeds, h.steps, rules=f"{h.task}-proxy"))
        if plain:
            out.append(SweepStep(_sweep_key(h.task, plain), h.task, plain, h.lrs, h.seeds, h.steps,
                                 overrides={"weight_decay": 0.0}))
    return out


def analyze_headline(ctx: Context, quick: bool) -> Analysis:
    tables, findings, missing = [], {}, []
    figure_inputs: list[tuple] = []  # per task, what its figures draw (one palette over every task's names)
    known = HEADLINE_OPTIMIZERS
    plain = no_weight_decay(known)
    for h in (HEADLINE_QUICK if quick else HEADLINE_FULL):
        c = ctx.runs(h.task, _sweep_key(h.task, plain))
        if not c.runs:
            missing.append(f"runs/{h.task}")
            continue
        rows = labelled_lr_rows(c, h.task)
        grid = {g["optimizer"]: g for g in lr_grid_rows(rows, h.lrs)}
        opts = [o for o in known if o in grid]
        failed = [{"optimizer": o, lr_key(h.lrs[0]): "no result (run failed; see summary.json errors)"}
                  for o in known if o not in grid]
        seeds = max(r["seeds"] for r in rows)
        tables.append(Table(f"{h.task}: final validation loss vs peak lr (mean over seeds ± half-range)",
                            lr_grid_columns(h.lrs), [grid[o] for o in opts] + failed,
                            f"{h.task}/tiny, {h.steps} steps, seeds {list(h.seeds)} ({seeds} per cell at most); "
                            f"SlimAdam uses rules derived by slimbench from an AdamW proxy run at lr {h.proxy_lr:g} "
                            "(cutoff 1, per parameter). 'diverged' = some seed's loss exceeded 3x its first loss "
                            "or was not finite."
                            + (" SM3 runs with weight_decay 0 (it has none)." if "sm3" in grid else "")))
        summary = {s["optimizer"]: s for s in lr_summary_rows(rows)}
        best = {o: (summary[o]["best_lr"], summary[o]["best_loss"]) for o in opts}
        adam_best, adam_loss = best.get("adamw", (None, None))
        at_adam = {r["optimizer"]: None if r["diverged"] else r["final_mean"] for r in rows if r["lr"] == adam_best}
        state = state_bytes(c)
        mem = {o: state.get(o) for o in opts}
        summary_rows = []
        for o in opts:
            v, at = best[o][1], at_adam.get(o)
            summary_rows.append({
                "optimizer": o, "best_lr": best[o][0], "best": v, "at_adam": at,
                "gap": None if v is None or adam_loss is None else v - adam_loss,
                "at_adam_gap": None if at is None or adam_loss is None else at - adam_loss,
                "state_bytes": mem[o], "robust_width": summary[o]["robust_width"],
                "saved": None if mem[o] is None or not mem.get("adamw") else 100 * (1 - mem[o] / mem["adamw"])})
        adam_lr = "-" if adam_best is None else f"{adam_best:g}"
        columns = [Column("optimizer", "optimizer"), Column("best_lr", "best lr", "g"),
                   Column("best", "best val", "g4"), Column("gap", "gap vs AdamW best", "g4"),
                   Column("at_adam", f"val at AdamW's best lr ({adam_lr})", "g4"),
                   Column("at_adam_gap", "gap at that lr", "g4"), Column("state_bytes", "state bytes", "int"),
                   Column("saved", "state saved vs AdamW %", "g4"), Column("robust_width", "lr width (5%)", "x2")]
        tables.append(Table(f"{h.task}: best lr, gap to AdamW, and optimizer state memory", columns, summary_rows,
                            "lr width: hi / lo of the contiguous lrs around the best lr whose mean final val loss is "
                            "within 5% of the best, none diverged (slimbench report's robustness). state bytes: the "
                            "ledger's measured optimizer state after the first step (model parameters excluded)."))
        names = display_names(c, [ctx.out / "rules" / f"{h.task}-proxy.json"])
        claims = [{"task": h.task, "optimizer": o, "best_lr": {"estimate": best[o][0]}} for o in opts]
        figure_inputs.append((h.task, rows, claims, c, names))
        if adam_best is not None:
            at_best = Collection(runs=[i for i in c.runs if i.data.config.lr == adam_best])
            step_table = _val_vs_step(at_best, opts, f"{h.task}: validation loss vs step at AdamW's best lr "
                                                     f"{adam_best:g}")
            if step_table.rows:
                tables.append(step_table)
        if ctx.has("rules", f"{h.task}-proxy"):
            rules = ctx.rules(f"{h.task}-proxy")
            derived = rules["provenance"].get("derived", {})
            findings[f"{h.task}_proxy_rules_saved_fraction"] = derived.get("saved_fraction")
        findings[h.task] = {"best": best, "state_bytes": mem, "adam_best_lr": adam_best}
    return Analysis(tables, _figures(figure_inputs), findings, missing)


def _figures(inputs: Sequence[tuple]) -> list:
    """Per task the report's loss-vs-lr (seed band, best lr starred) and loss-vs-step figures (one panel
    per lr), the two sweeps of a task pooled under its name, one colour per optimizer over every task."""
    palette = report_figures().Palette({n for *_, names in inputs for n in names.values()})

    def draw(task: str, rows: list[dict], claims: list[dict], c: Collection, names: dict[str, str], out):
        f = report_figures()
        return pairs(f.loss_vs_lr(rows, claims, out, palette, names)
                     + f.loss_vs_step(c, out, palette, names, group=lambda i: (task, i.data.config.optimizer)))

    return [partial(draw, *args) for args in inputs]


def _val_vs_step(c: Collection, opts: Sequence[str], title: str) -> Table:
    """Validation loss (mean over seeds) at each evaluation step per optimizer whose runs all finished
    (the report's loss-vs-step tables show the training loss)."""
    by_opt: dict[str, list[RunResult]] = defaultdict(list)
    for i in c.runs:
        by_opt[i.data.config.optimizer].append(i.data)
    rows, steps = [], []
    for o in opts:
        rs = by_opt.get(o, [])
        if not rs or any(r.status != "finished" for r in rs):
            continue
        steps = [v["step"] for v in rs[0].val]
        rows.append([o, *(statistics.fmean(r.val[k]["loss"] for r in rs) for k in range(len(steps)))])
    return table_from_lists(title, ["optimizer", *(f"step {s}" for s in steps)], rows)
