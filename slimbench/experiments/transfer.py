"""(6) Rule transfer: depth-averaged rules from a small proxy gpt applied to a wider, deeper gpt.

The proxy's and the target's own rules side by side (K per layer type), then the target trained with AdamW
and with SlimAdam under the proxy's, the target's and the paper's rules.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

from slimbench.experiments.common import (display_names, labelled_lr_rows, pairs, paper_roles, report_figures,
                                          state_bytes)
from slimbench.experiments.engine import Analysis, Context
from slimbench.experiments.steps import RulesStep, SNRStep, Step, SweepStep
from slimbench.layers import PAPER_DIMS
from slimbench.report.load import Collection
from slimbench.report.lr import lr_grid_columns, lr_grid_rows, lr_key, lr_summary_rows
from slimbench.report.table import Column, Table, table_from_lists


TRANSFER_PROXY = {"n_layer": 2, "n_head": 2, "d_model": 64}  # the tiny gpt preset
TRANSFER_TARGET = {"n_layer": 4, "n_head": 3, "d_model": 96}
TRANSFER_LRS = (1e-3, 3e-3, 1e-2)


def plan_transfer(quick: bool) -> list[Step]:
    proxy = {"n_layer": 1, "n_head": 2, "d_model": 32} if quick else TRANSFER_PROXY
    target = {"n_layer": 2, "n_head": 2, "d_model": 48} if quick else TRANSFER_TARGET
    steps = 30 if quick else 300
    every = 10 if quick else 25
    lrs = (3e-3,) if quick else TRANSFER_LRS
    seeds = (0,) if quick else (0, 1)
    return [
        SNRStep("proxy", "gpt", lr=3e-3, steps=steps, every=every, overrides=proxy),
        RulesStep("proxy", "proxy", depth_average=True),
        SNRStep("target", "gpt", lr=3e-3, steps=steps, every=every, overrides=target),
        RulesStep("target", "target", depth_average=True),
        SweepStep("adamw", "gpt", ("adamw",), lrs, seeds, steps, overrides=target),
        SweepStep("slimadam-proxy-rules", "gpt", ("slimadam",), lrs, seeds, steps, rules="proxy", overrides=target),
        SweepStep("slimadam-target-rules", "gpt", ("slimadam",), lrs, seeds, steps, rules="target", overrides=target),
        SweepStep("slimadam-paper-rules", "gpt", ("slimadam",), lrs, seeds, steps, rules="paper", overrides=target),
    ]


def analyze_transfer(ctx: Context, quick: bool) -> Analysis:
    tables, missing = [], []
    choice: dict[str, dict[str, str]] = {}
    for k in ("proxy", "target"):
        if ctx.has("rules", k):
            choice[k] = {e["match"]: e["dims"] for e in ctx.rules(k)["rules"]}
        else:
            missing.append(f"rules/{k}.json")
    if choice:
        types = sorted({t for c in choice.values() for t in c}, key=list(PAPER_DIMS).index)
        paper_k = next((paper_roles(ctx.snr(k)) for k in ("target", "proxy") if ctx.has("snr", k)), {})
        k_rows = [[t, choice.get("proxy", {}).get(t, "-"), choice.get("target", {}).get(t, "-"),
                   paper_k.get(t) or "none",
                   "same" if choice.get("proxy", {}).get(t) == choice.get("target", {}).get(t) else "differs"]
                  for t in types]
        saved = {k: ctx.rules(k)["provenance"].get("derived", {}).get("saved_fraction") for k in choice}
        tables.append(table_from_lists(
            "Depth-averaged rules (K per layer type) from the proxy and from the target",
            ["layer type", "proxy K", "target K", "paper K", "proxy vs target"], k_rows,
            f"proxy gpt {TRANSFER_PROXY if not quick else 'quick'}, target gpt "
            f"{TRANSFER_TARGET if not quick else 'quick'}; both measured with AdamW at lr 3e-3. "
            f"V saved on its own model: proxy {saved.get('proxy')}, target {saved.get('target')}."))
    variants = ("adamw", "slimadam-proxy-rules", "slimadam-target-rules", "slimadam-paper-rules")
    lrs = (3e-3,) if quick else TRANSFER_LRS
    rows, state, names, runs = [], {}, {}, []
    for v in variants:
        c = ctx.runs(v)  # one sweep at a time: the proxy's and the target's rules may be the same file content
        if not c.runs:
            missing.append(f"runs/{v}")
            continue
        rows += labelled_lr_rows(c, "target gpt", optimizer=v)
        names[v] = _variant_name(v, display_names(c, [ctx.out / "rules" / f"{k}.json" for k in ("proxy", "target")]),
                                 "proxy" in choice and choice.get("proxy") == choice.get("target"))
        runs += c.runs
        state[v] = next(iter(state_bytes(c).values()), None)
    grid = lr_grid_rows(rows, lrs)
    for g in grid:
        g["state_bytes"] = state[g["optimizer"]]
    findings = {g["optimizer"]: {lr: g[lr_key(lr)][0] for lr in lrs if isinstance(g[lr_key(lr)], tuple)
                                 and g[lr_key(lr)][0] is not None} for g in grid}
    same = "proxy" in choice and choice.get("proxy") == choice.get("target")
    tables.append(Table("Target model: final validation loss vs lr (mean over seeds ± half-range)",
                        lr_grid_columns(lrs, label="variant") + [Column("state_bytes", "state bytes", "int")], grid,
                        "slimadam-paper-rules: the paper's rules by layer type (slimbench's 'paper' rules)."
                        + (" The proxy's and the target's rules are identical, so those two rows are the same "
                           "runs up to file names (runs are deterministic)." if same else "")))
    plots = [partial(_draw, rows, Collection(runs=runs), names)] if rows else []
    return Analysis(tables, plots, {"final_val": findings, "rules": choice}, missing)


def _variant_name(variant: str, names: dict[str, str], same: bool) -> str:
    """The report's name of a sweep's optimizer, saying whose SNR rules it used (the proxy's and the
    target's read alike to the report: both depth-averaged SNR rules at cutoff 1); ``same``: the two
    rules are equal, so the proxy's curve lies under the target's."""
    (name,) = names.values()
    who = variant.removeprefix("slimadam-").removesuffix("-rules")
    if who not in ("proxy", "target"):
        return name
    return name.replace("(SNR rules", "(proxy's SNR rules = target's" if same and who == "proxy" else f"({who}'s SNR rules")


def _draw(rows: list[dict], c: Collection, names: dict[str, str], out: Path) -> list[tuple[str, str]]:
    """The report's loss-vs-lr (seed band, best lr starred) and loss-vs-step figures of the target, one
    curve per variant (a run's variant is its sweep folder)."""
    f = report_figures()
    palette = f.Palette(names.values())
    claims = [{"task": s["task"], "optimizer": s["optimizer"], "best_lr": {"estimate": s["best_lr"]}}
              for s in lr_summary_rows(rows)]
    return pairs(f.loss_vs_lr(rows, claims, out, palette, names)
                 + f.loss_vs_step(c, out, palette, names, group=lambda i: ("target gpt", Path(i.path).parent.name)))
