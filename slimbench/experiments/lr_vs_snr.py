"""(2) Learning rate vs compressibility (paper Sec. 4): larger peak lrs give lower SNR.

The same gpt measured at several lrs; the SNR of the paper's K per layer type vs lr, the best K per lr,
and the second moments saved at cutoff 1.
"""
from __future__ import annotations

import math
from functools import partial

from slimbench.experiments.common import (ROLE_NAMES, best_role, gpt_deep, paper_roles, report_plots,
                                          type_means)
from slimbench.experiments.engine import Analysis, Context
from slimbench.experiments.steps import SNRStep, Step
from slimbench.report.table import table_from_lists
from slimbench.snr.derive import derive_rules


LRS_SNR_FULL = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
LRS_SNR_QUICK = (3e-4, 3e-3, 3e-2)


def plan_lr_vs_snr(quick: bool) -> list[Step]:
    lrs = LRS_SNR_QUICK if quick else LRS_SNR_FULL
    return [SNRStep(f"gpt-lr{lr:g}", "gpt", lr=lr, steps=40 if quick else 1000, every=10 if quick else 100,
                    overrides=gpt_deep(quick)) for lr in lrs]


def analyze_lr_vs_snr(ctx: Context, quick: bool) -> Analysis:
    lrs = LRS_SNR_QUICK if quick else LRS_SNR_FULL
    have = [lr for lr in lrs if ctx.has("snr", f"gpt-lr{lr:g}")]
    missing = [f"snr/gpt-lr{lr:g}.json" for lr in lrs if lr not in have]
    if not have:
        return Analysis([], missing=missing)
    skip = 0 if quick else 100
    recs = {lr: ctx.snr(f"gpt-lr{lr:g}") for lr in have}
    means = {lr: type_means(r, skip) for lr, r in recs.items()}
    types = [t for t in means[have[0]]]
    rows, best_rows, falls = [], [], {}
    paper_k = paper_roles(recs[have[0]])
    panel: dict[str, tuple[list[float], list[float]]] = {}
    for t in types:
        r0 = paper_k.get(t) or best_role(means[have[0]][t])[0]
        vals = [means[lr][t].get(r0, math.nan) for lr in have]
        # "falls with lr": SNR at the largest lr below SNR at the smallest, and the Spearman sign over lrs
        pairs = sum(1 for i in range(len(vals) - 1) if vals[i + 1] < vals[i])
        falls[t] = {"first_vs_last": vals[-1] < vals[0], "decreasing_steps": f"{pairs}/{len(vals) - 1}"}
        rows.append([t, ROLE_NAMES[r0], *vals, f"{pairs}/{len(vals) - 1}", "yes" if vals[-1] < vals[0] else "no"])
        best_rows.append([t, *(f"{best_role(means[lr][t])[0]} ({best_role(means[lr][t])[1]:.3g})" for lr in have)])
        panel[t] = ([float(x) for x in have], vals)
    saved = [[f"{lr:g}", derive_rules(recs[lr], 1.0, skip_steps=skip).saved_fraction,
              recs[lr].run.get("first_loss"), recs[lr].run.get("last_loss"), recs[lr].run.get("diverged_at")]
             for lr in have]
    t1 = table_from_lists(
        "SNR of the paper's K (embedding/pos: embed dim) per layer type vs peak lr",
        ["layer type", "K", *(f"lr {lr:g}" for lr in have), "decreasing steps", "SNR(max lr) < SNR(min lr)"], rows,
        f"gpt {gpt_deep(quick)}, AdamW, {recs[have[0]].run.get('steps_done')} steps per lr, SNR averaged over "
        f"measured steps > {skip} and over depth.")
    t2 = table_from_lists("Best K (its SNR) per layer type vs lr", ["layer type", *(f"lr {lr:g}" for lr in have)],
                          best_rows)
    t3 = table_from_lists("Second moments saved at cutoff 1 (per-parameter rules) and loss vs lr",
                          ["lr", "V saved", "first loss", "last loss (mean last 10)", "diverged at"], saved,
                          fmt=["str", "pct", "g4", "g4", "g4"])
    plot = partial(report_plots().line_panels, {"all": panel}, name="snr-vs-lr",
                   title="SNR of the paper's K per layer type vs peak lr (gpt, AdamW; mean over steps and depth)",
                   xlabel="peak learning rate", ylabel="SNR of V along the paper's K", logx=True, logy=True,
                   hline=(1.0, "cutoff 1"))
    return Analysis([t1, t2, t3], [plot], {"falls_with_lr": falls, "by_lr": {f"{lr:g}": means[lr] for lr in have}},
                    missing)
