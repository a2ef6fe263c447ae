"""(3) Vocabulary size vs compressing the token dim (linear-lm, BPE): the embedding and head.

Per vocabulary size: the SNR of the embedding and head along each dim, and the final-loss gap to AdamW of
SlimAdam under hand-written (K_embedding, K_head) choices.
"""
from __future__ import annotations

import math
from collections import defaultdict
from functools import partial
from typing import Any

from slimbench.experiments.common import final, report_plots
from slimbench.experiments.engine import Analysis, Context
from slimbench.experiments.steps import FixedRules, SNRStep, Step, SweepStep
from slimbench.report.table import table_from_lists
from slimbench.snr.derive import mean_snr


VOCABS_FULL = (256, 1024, 4096)
VOCABS_QUICK = (256,)
# (K_embedding, K_head): "embed" = dim 1 of (vocab, dim), "token" = dim 0, "none" = Adam's full V.
VOCAB_CHOICES = (("embed", "embed"), ("token", "none"), ("none", "token"), ("token", "token"))


def _choice_key(emb: str, head: str) -> str:
    return f"emb-{emb}_head-{head}"


def _legend(emb: str, head: str) -> str:
    """A choice as a legend names it: SlimAdam with the K of each tensor (the paper's choice marked)."""
    return f"SlimAdam, K_embedding={emb}, K_head={head}" + (" (paper)" if (emb, head) == ("embed", "embed") else "")


def plan_vocab(quick: bool) -> list[Step]:
    steps = 40 if quick else 500
    seeds = (0,) if quick else (0, 1)
    out: list[Step] = []
    for v in (VOCABS_QUICK if quick else VOCABS_FULL):
        o = {"vocab_size": v}
        out.append(SNRStep(f"linear-lm-v{v}", "linear-lm", lr=3e-3, steps=steps, every=10 if quick else 50,
                           overrides=o))
        out.append(SweepStep(f"v{v}-adamw", "linear-lm", ("adamw",), (1e-2,), seeds, steps, overrides=o))
        for emb, head in VOCAB_CHOICES:
            key = _choice_key(emb, head)
            out.append(FixedRules(key, tuple((n, d) for n, d in (("tok_emb.weight", emb), ("head.weight", head))
                                             if d != "none"), f"K_embedding={emb}, K_head={head}"))
            out.append(SweepStep(f"v{v}-{key}", "linear-lm", ("slimadam",), (1e-2,), seeds, steps, rules=key,
                                 overrides=o))
    return out


def analyze_vocab(ctx: Context, quick: bool) -> Analysis:
    vocabs = VOCABS_QUICK if quick else VOCABS_FULL
    skip = 0 if quick else 50
    snr_rows, gap_rows, missing = [], [], []
    findings: dict[str, Any] = {"token_snr": {}, "gap": {}}
    panel: dict[str, tuple[list[float], list[float], list[float | None]]] = defaultdict(lambda: ([], [], []))
    for v in vocabs:
        if ctx.has("snr", f"linear-lm-v{v}"):
            rec = ctx.snr(f"linear-lm-v{v}")
            m = mean_snr(rec, skip)
            row = [v]
            for name in ("tok_emb.weight", "head.weight"):
                per_k = m.get(name, {})
                row += [per_k.get("0", math.nan), per_k.get("1", math.nan)]
                findings["token_snr"].setdefault(name, {})[v] = per_k.get("0")
            snr_rows.append(row)
        else:
            missing.append(f"snr/linear-lm-v{v}.json")
        base, sp = final(ctx.runs(f"v{v}-adamw"))
        if base is None:
            missing.append(f"runs/v{v}-adamw")
            continue
        row = [v, (base, sp)]
        for emb, head in VOCAB_CHOICES:
            val, sp = final(ctx.runs(f"v{v}-{_choice_key(emb, head)}"))
            gap = None if val is None else val - base
            row.append(None if gap is None else (gap, sp))
            findings["gap"].setdefault(_choice_key(emb, head), {})[v] = gap
            if gap is not None:
                xs, ys, errs = panel[_legend(emb, head)]
                xs.append(v)
                ys.append(gap)
                errs.append(sp)
        gap_rows.append(row)
    t1 = table_from_lists(
        "SNR of the embedding and head along the token dim (K=(0,)) and the embedding dim (K=(1,))",
        ["vocab", "emb token-dim", "emb embed-dim", "head token-dim", "head embed-dim"], snr_rows,
        f"linear-lm (token embedding + untied head, d_model 64), BPE Shakespeare, AdamW lr 3e-3, SNR averaged over "
        f"measured steps > {skip}.")
    t2 = table_from_lists(
        "Final validation loss gap vs AdamW of each (K_embedding, K_head) choice (SlimAdam, lr 1e-2)",
        ["vocab", "AdamW val loss", *(f"emb={e}, head={h}" for e, h in VOCAB_CHOICES)], gap_rows,
        "gap = SlimAdam val loss - AdamW val loss (nats), mean over seeds (± half the range over seeds of that "
        "optimizer's own val loss); positive = worse than Adam. Losses are nats per BPE token, so only gaps within "
        "one vocabulary size compare (a larger-vocabulary token carries more text).",
        fmt=["g4", "pm"] + ["pm+"] * len(VOCAB_CHOICES))
    plot = partial(report_plots().line_panels, {"all": dict(panel)}, name="vocab-gap",
                   title="SlimAdam's final val loss minus AdamW's vs vocabulary size (linear-lm, lr 1e-2, mean over "
                         "seeds; bars: half-range of SlimAdam's loss over seeds)", xlabel="BPE vocabulary size",
                   ylabel="val loss gap to AdamW (nats)", logx=True, hline=(0.0, "AdamW (gap 0)"))
    return Analysis([t1, t2], [plot], findings, missing)
