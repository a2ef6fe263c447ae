"""(4) Mitchell vs PyTorch default initialisation (gpt): the init changes the SNR of the residual projections.

The init names are the tasks' own (:data:`slimbench.tasks.models.INITS`).
"""
from __future__ import annotations

import math
from functools import partial
from pathlib import Path

from slimbench.experiments.common import ROLE_NAMES, best_role, gpt_deep, pairs, report_figures, type_means
from slimbench.experiments.engine import Analysis, Context
from slimbench.experiments.steps import SNRStep, Step
from slimbench.report.table import table_from_lists
from slimbench.snr.derive import ROLES
from slimbench.tasks.models import INITS


def plan_init(quick: bool) -> list[Step]:
    return [SNRStep(f"gpt-{init}", "gpt", lr=3e-4, steps=40 if quick else 1000, every=10 if quick else 100,
                    overrides={**gpt_deep(quick), "init": init}) for init in INITS]


def analyze_init(ctx: Context, quick: bool) -> Analysis:
    have = [i for i in INITS if ctx.has("snr", f"gpt-{i}")]
    if not have:
        return Analysis([], missing=[f"snr/gpt-{i}.json" for i in INITS])
    skip = 0 if quick else 100
    means = {i: type_means(ctx.snr(f"gpt-{i}"), skip) for i in have}
    rows = []
    for t in means[have[0]]:
        for i in have:
            per = means[i].get(t, {})
            best, _ = best_role(per)
            rows.append([t, i, *(per.get(r, math.nan) for r in ROLES), best,
                         "residual projection" if t in ("attn_out", "mlp_down") else ""])
    losses = [[i, ctx.snr(f"gpt-{i}").run.get("first_loss"), ctx.snr(f"gpt-{i}").run.get("last_loss")] for i in have]
    t1 = table_from_lists(
        "SNR per layer type under Mitchell init (std 0.02, residual projections 0.02/sqrt(2L)) vs PyTorch default "
        "init", ["layer type", "init", *(ROLE_NAMES[r] for r in ROLES), "best K", ""], rows,
        f"gpt {gpt_deep(quick)}, AdamW lr 3e-4, SNR averaged over measured steps > {skip} and over depth.")
    t2 = table_from_lists("Training loss per init", ["init", "first loss", "last loss (mean last 10)"], losses)
    plots = [partial(_draw, i, means[i], skip) for i in have]
    return Analysis([t1, t2], plots, {"by_init": means}, [f"snr/gpt-{i}.json" for i in INITS if i not in have])


def _draw(init: str, by_type: dict[str, dict[str, float]], skip: int, out: Path) -> list[tuple[str, str]]:
    """The report's SNR-per-layer-type bars (cutoff 1) of one init: the first table's rows for it."""
    bars = [{"layer_type": t, "chosen": best_role(per)[0], **per} for t, per in by_type.items()]
    return pairs([report_figures().snr_type_bars(bars, out, f"snr-types-gpt-{init}",
                                                 f"gpt, {init} init, steps > {skip}", bracket="best K")])
