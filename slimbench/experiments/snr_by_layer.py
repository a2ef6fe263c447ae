"""(1) SNR by layer type and depth (paper Sec. 4-5): which K each layer type prefers, against the paper's.

A gpt trained with AdamW at a small lr; SNR per candidate K per layer type (averaged over depth) and per
parameter, a seed check, and the second moments saved vs the SNR cutoff (paper Fig. 10, top).
"""
from __future__ import annotations

import math
from functools import partial
from pathlib import Path

from slimbench.experiments.common import (ROLE_NAMES, best_role, depth, gpt_deep, pairs, paper_roles,
                                          report_figures, type_means)
from slimbench.experiments.engine import Analysis, Context
from slimbench.experiments.steps import SNRStep, Step
from slimbench.report.table import table_from_lists
from slimbench.snr.derive import ROLES, mean_snr, role, sweep_cutoffs
from slimbench.snr.stats import key_dims


def plan_snr_by_layer(quick: bool) -> list[Step]:
    # A second seed (model init and batches) checks that the best K per layer type is not seed noise.
    return [SNRStep(key, "gpt", lr=3e-4, steps=40 if quick else 1500, every=10 if quick else 100, seed=seed,
                    overrides=gpt_deep(quick)) for key, seed in (("gpt", 0), ("gpt-seed1", 1))]


def analyze_snr_by_layer(ctx: Context, quick: bool) -> Analysis:
    if not ctx.has("snr", "gpt"):
        return Analysis([], missing=["snr/gpt.json"])
    rec = ctx.snr("gpt")
    skip = 0 if quick else 100
    by_type = type_means(rec, skip)
    paper_k = paper_roles(rec)
    rows, agree = [], {}
    for t, per_role in by_type.items():
        best, v = best_role(per_role)
        paper = paper_k.get(t)
        if paper is None:
            verdict = "no paper rule"
        elif best == paper:
            verdict = "agree" if v > 1.0 else "agree on K, but SNR <= 1 (stays uncompressed)"
        else:
            verdict = f"disagree (paper: {paper}, SNR {per_role.get(paper, math.nan):.3g})"
        agree[t] = verdict
        rows.append([t, len([p for p in rec.tracked if p.layer_type == t]),
                     *(per_role.get(r, math.nan) for r in ROLES), best, paper or "-", verdict])
    n_norm = len([p for p in rec.params if p.layer_type in ("norm", "vector", "bias")])
    rows.append(["norm (1-D)", n_norm, None, None, None, "none (1-D, not tracked)", "none", "agree by construction"])
    t1 = table_from_lists(
        "SNR per layer type (mean over measured steps after the transient and over depth)",
        ["layer type", "layers", *(ROLE_NAMES[r] for r in ROLES), "best K", "paper K", "agreement"], rows,
        f"gpt {rec.run.get('task', {}).get('spec', {}).get('model')}, AdamW lr {rec.run.get('lr')}, "
        f"{rec.run.get('steps_done')} steps, SNR averaged over steps > {skip}. For the embedding "
        "(tokens, dim): fan_out = token dim, fan_in = embedding dim (the paper's 'embed').")
    means = mean_snr(rec, skip)
    info = {p.name: p for p in rec.params}
    depth_rows = []
    for name, per_k in means.items():
        p = info[name]
        per_role = {role(key_dims(k), len(p.shape)): v for k, v in per_k.items()}
        best, _ = best_role(per_role)
        d = depth(name)
        depth_rows.append([name, p.layer_type, "-" if d is None else d, *(per_role.get(r) for r in ROLES), best])
    t2 = table_from_lists("SNR per parameter (depth = block index)",
                          ["parameter", "layer type", "depth", *(ROLE_NAMES[r] for r in ROLES), "best K"], depth_rows)
    cut = sweep_cutoffs(rec, skip_steps=skip)
    t3 = table_from_lists("Second moments saved vs SNR cutoff (per-parameter rules; paper Fig. 10 top)",
                          ["cutoff", "V saved", "matrices compressed"],
                          [[c.cutoff, c.saved_fraction, f"{c.compressed}/{c.tracked}"] for c in cut],
                          fmt=["g4", "pct", "str"])
    bars = [{"layer_type": t, "chosen": best_role(per)[0], **per} for t, per in by_type.items()]
    plot = partial(_draw, bars, rec, skip)
    tables = [t1, t2, t3]
    missing = []
    if ctx.has("snr", "gpt-seed1"):
        other = type_means(ctx.snr("gpt-seed1"), skip)
        rows = []
        for t, per_role in by_type.items():
            b0, b1 = best_role(per_role)[0], best_role(other.get(t, {}))[0]
            rows.append([t, *(per_role.get(r, math.nan) for r in ROLES), b0,
                         *(other.get(t, {}).get(r, math.nan) for r in ROLES), b1, "same" if b0 == b1 else "differs"])
        tables.insert(1, table_from_lists("Seed check: SNR per layer type with seed 0 and seed 1 (init and batches)",
                                          ["layer type", *(f"s0 {r}" for r in ROLES), "s0 best",
                                           *(f"s1 {r}" for r in ROLES), "s1 best", "best K"], rows))
    else:
        missing.append("snr/gpt-seed1.json")
    return Analysis(tables, [plot], {"by_type": by_type, "agreement": agree,
                                     "saved_at_cutoff_1": next(c.saved_fraction for c in cut if c.cutoff == 1.0)},
                    missing)


def _draw(bars: list[dict], rec, skip: int, out: Path) -> list[tuple[str, str]]:
    """The report's SNR figures of seed 0: per layer type and K (the first table's means, cutoff 1), vs
    depth per layer type and K (the per-parameter table's), and each layer's best K vs step."""
    f = report_figures()
    return pairs([f.snr_type_bars(bars, out, "snr-types-gpt", f"gpt seed 0, steps > {skip}", bracket="best K")]
                 + f.snr_record_figures(rec, "gpt", out, 1.0, skip_steps=skip))
