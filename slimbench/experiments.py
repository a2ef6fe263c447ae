"""The paper's experiments as declarative recipes over slimbench's own commands (issue 6).

    from slimbench.experiments import run_experiment
    result = run_experiment("snr-by-layer", quick=True, out="results/experiments/snr-by-layer")

An experiment is a list of *steps* plus an *analysis*. Each step is a record naming one library call behind
an existing command, and the file it writes under the experiment's folder:

    SNRStep    -> snr/<key>.json     the library behind `python -m slimbench snr`   (slimbench.snr.run_snr)
    RulesStep  -> rules/<key>.json   the library behind `python -m slimbench rules` (slimbench.snr.derive_rules)
    FixedRules -> rules/<key>.json   a hand-written rules file (e.g. "compress the head along the token dim")
    SweepStep  -> runs/<key>/*.json  the library behind `python -m slimbench run`   (slimbench.bench.run_sweep)

A step whose output exists is skipped (sweeps resume run by run), so rerunning an experiment only computes
what is missing, and ``analyze_only=True`` builds tables from whatever exists. The analysis reads the files
back and returns tables, plots to draw and findings; :func:`write_outputs` writes ``summary.json`` (every
table, every finding, per-step wall times), ``tables.md`` and PNG plots. Nothing here prints.

Tables and plots are slimbench.report's: loss vs lr, best lr, lr robustness, state bytes, U-curves and loss
curves come from its rows and plot functions (the same numbers as ``python -m slimbench report`` on the
runs), and every table renders as report.md renders one. What is left here is what only an experiment asks:
which K each layer type prefers, gaps between rules choices, transfer between models.

Each recipe has two sizes: ``quick`` (tiny models and a few dozen steps, for CI) and ``full`` (all six ran in
about 43 minutes of compute on a shared 2-core CPU; see results/README.md for the commands and wall times).
Torch runs single-threaded by default (``threads=1``): on 2 shared cores it was ~5x faster than 2 threads
(measured: 200 gpt steps in 6.3 s vs 33.7 s while other jobs ran), and runs are deterministic per thread count.

Reference: Kalra, Kirchenbauer, Barkeshli, Goldstein (2025), "When Can You Get Away with Low Memory Adam?",
arXiv 2503.01843. Section numbers below refer to that paper.
"""
from __future__ import annotations

import json
import math
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any, Union

import torch

from slimbench.bench.results import RunResult, result_path
from slimbench.bench.sweep import SweepConfig, run_sweep
from slimbench.io import write_atomic, write_json_atomic
from slimbench.layers import PAPER_DIMS
from slimbench.report.load import Collection, load
from slimbench.report.tables import (Column, Table, half_range, lr_grid_columns, lr_grid_rows, lr_key, lr_rows,
                                     lr_summary_rows, memory_rows, optimizer_label, table_from_lists)
from slimbench.rules import save_rules
from slimbench.snr.derive import ROLES, average_by_type, derive_rules, mean_snr, role, sweep_cutoffs
from slimbench.snr.record import SNRRecord, load_snr
from slimbench.snr.run import run_snr
from slimbench.snr.stats import key_dims
from slimbench.snr.tracker import Schedule
from slimbench.tasks import build_task, get_spec

EXPERIMENTS_FORMAT = "slimbench.experiment"
EXPERIMENTS_VERSION = 2  # 2: tables are slimbench.report tables (raw cell values), plots are {title, file}

# ---------------------------------------------------------------------------------------------------------
# Steps


@dataclass(frozen=True)
class SNRStep:
    """Train ``task`` with AdamW at ``lr`` for ``steps`` steps and record SNR (as `slimbench snr`)."""

    key: str
    task: str
    lr: float
    steps: int
    preset: str = "tiny"
    seed: int = 0
    overrides: Mapping[str, Any] = field(default_factory=dict)
    every: int = 50  # measure every this many steps (plus step 1 and the last)

    def output(self, out: Path) -> Path:
        return out / "snr" / f"{self.key}.json"

    def command(self, out: Path) -> str:
        sets = "".join(f" --set {k}={v!r}" for k, v in self.overrides.items())
        return (f"python -m slimbench snr --task {self.task} --preset {self.preset} --seed {self.seed} "
                f"--lr {self.lr:g} --steps {self.steps} --schedule every:{self.every}{sets} "
                f"--out {self.output(out)}")

    def execute(self, out: Path, ctx: Context) -> None:
        task = build_task(self.task, self.preset, self.seed, **_with_warmup(self.task, self.preset, self.steps,
                                                                             self.overrides))
        record = run_snr(task, lr=self.lr, schedule=Schedule(every=self.every, until=0, then_every=self.every))
        record.save(self.output(out))


@dataclass(frozen=True)
class RulesStep:
    """Derive rules from SNR record ``snr`` (a key of an SNRStep) (as `slimbench rules`)."""

    key: str
    snr: str
    cutoff: float = 1.0
    depth_average: bool = False
    skip_steps: int = 0

    def output(self, out: Path) -> Path:
        return out / "rules" / f"{self.key}.json"

    def command(self, out: Path) -> str:
        return (f"python -m slimbench rules {out / 'snr' / (self.snr + '.json')} --cutoff {self.cutoff:g}"
                + (" --depth-average" if self.depth_average else "")
                + (f" --skip-steps {self.skip_steps}" if self.skip_steps else "") + f" --out {self.output(out)}")

    def execute(self, out: Path, ctx: Context) -> None:
        derive_rules(ctx.snr(self.snr), self.cutoff, depth_average=self.depth_average,
                     skip_steps=self.skip_steps).save(self.output(out))


@dataclass(frozen=True)
class FixedRules:
    """A hand-written rules file: ``rules`` = ((parameter name, dims alias), ...), by name."""

    key: str
    rules: tuple[tuple[str, str], ...]
    note: str = ""

    def output(self, out: Path) -> Path:
        return out / "rules" / f"{self.key}.json"

    def command(self, out: Path) -> str:
        return f"(rules file written by the recipe: {dict(self.rules)})"

    def execute(self, out: Path, ctx: Context) -> None:
        save_rules(self.output(out), [{"match": n, "dims": d} for n, d in self.rules], by="name",
                   provenance={"written_by": "slimbench.experiments", "note": self.note})


@dataclass(frozen=True)
class SweepStep:
    """An lr sweep (as `slimbench run`); ``rules`` is None, "paper" or the key of a rules step."""

    key: str
    task: str
    optimizers: tuple[str, ...]
    lrs: tuple[float, ...]
    seeds: tuple[int, ...]
    steps: int
    preset: str = "tiny"
    rules: str | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def output(self, out: Path) -> Path:
        return out / "runs" / self.key

    def rules_path(self, out: Path) -> str | None:
        if self.rules is None or self.rules == "paper":
            return self.rules
        return str(out / "rules" / f"{self.rules}.json")

    def sweep(self, out: Path) -> SweepConfig:
        return SweepConfig(task=self.task, optimizers=self.optimizers, lrs=self.lrs, seeds=self.seeds,
                           preset=self.preset, rules=self.rules_path(out),
                           overrides={**self.overrides, **_with_warmup(self.task, self.preset, self.steps, {})})

    def command(self, out: Path) -> str:
        sets = "".join(f" --set {k}={json.dumps(v)}" for k, v in self.overrides.items())
        rules = f" --rules {self.rules_path(out)}" if self.rules else ""
        return (f"python -m slimbench run --task {self.task} --preset {self.preset} --optimizers "
                f"{','.join(self.optimizers)} --lrs {','.join(f'{x:g}' for x in self.lrs)} --seeds "
                f"{','.join(map(str, self.seeds))} --steps {self.steps}{sets}{rules} --out {self.output(out)}")

    def execute(self, out: Path, ctx: Context) -> None:
        outcomes = run_sweep(self.sweep(out).runs(), self.output(out), on_event=ctx.on_event)
        ctx.errors.extend(f"{o.config.run_id}: {o.message.splitlines()[0] if o.message else o.status}"
                          for o in outcomes if o.status in ("error", "unavailable"))

    def done(self, out: Path) -> bool:
        runs = self.sweep(out).runs()
        return all(result_path(self.output(out), c).exists() for c in runs)


Step = Union[SNRStep, RulesStep, FixedRules, SweepStep]


def _with_warmup(task: str, preset: str, steps: int, overrides: Mapping[str, Any]) -> dict:
    """``steps`` plus a warmup that keeps the preset's warmup fraction (as `slimbench snr` does)."""
    base = get_spec(task, preset, **overrides)
    warm = max(1, round(base.warmup_steps * steps / base.steps)) if steps < base.steps else base.warmup_steps
    return {**overrides, "steps": int(steps), "warmup_steps": int(min(warm, steps))}


# ---------------------------------------------------------------------------------------------------------
# Results of an analysis

Draw = Callable[[Path], list[tuple[str, str]]]  # draws PNGs into a folder; returns (title, path) of each


@dataclass
class Analysis:
    """Tables (slimbench.report Tables, rendered as report.md renders them), plots drawn by slimbench.report
    into the experiment's folder, and the machine-readable findings."""

    tables: list[Table]
    plots: list[Draw] = field(default_factory=list)
    findings: dict[str, Any] = field(default_factory=dict)  # machine-readable key results
    missing: list[str] = field(default_factory=list)  # outputs the analysis wanted but did not find


@dataclass
class Context:
    """What steps and analyses share: the experiment folder, loaders, a progress callback, errors."""

    out: Path
    on_event: Callable[[str, Any, Any], None] | None = None
    errors: list[str] = field(default_factory=list)

    def snr(self, key: str) -> SNRRecord:
        return load_snr(self.out / "snr" / f"{key}.json")

    def has(self, kind: str, key: str) -> bool:
        p = self.out / kind / (key if kind == "runs" else f"{key}.json")
        return p.exists()

    def runs(self, *keys: str) -> Collection:
        """The run results of sweeps ``keys``, read as the report reads them (none for a sweep not run)."""
        folders = [self.out / "runs" / k for k in keys if (self.out / "runs" / k).exists()]
        return load(folders) if folders else Collection()

    def rules(self, key: str) -> dict:
        return json.loads((self.out / "rules" / f"{key}.json").read_text())


@dataclass(frozen=True)
class Experiment:
    name: str
    title: str
    claim: str  # what the paper reports
    plan: Callable[[bool], list[Step]]  # quick -> steps
    analyze: Callable[[Context, bool], Analysis]


# ---------------------------------------------------------------------------------------------------------
# Shared helpers for analyses

PAPER_ROLE = {"query": "fan_in", "key": "fan_in", "value": "fan_out", "attn_out": "fan_out", "mlp_up": "fan_out",
              "mlp_gate": "fan_out", "mlp_down": "fan_out", "embedding": "fan_in", "pos_embedding": "fan_in",
              "head": "fan_in"}
# For (tokens, dim) tables and (vocab, dim) heads, role fan_in = dim 1 = the embedding dim (paper: "embed"),
# role fan_out = dim 0 = the token dim (paper: never compress).
ROLE_NAMES = {"fan_out": "K=(0,) fan_out", "fan_in": "K=(1,) fan_in", "both": "K=(0,1) both"}


def _plots() -> ModuleType:
    """slimbench.report.plots, imported only when an experiment is analysed: matplotlib would cost every CLI
    start ~0.5 s (the CLI imports every subcommand)."""
    from slimbench.report import plots

    return plots


def _best(per_role: Mapping[str, float]) -> tuple[str | None, float]:
    best, v = None, -math.inf
    for r in ROLES:
        x = per_role.get(r, math.nan)
        if not math.isnan(x) and x > v:
            best, v = r, x
    return best, v


def _type_means(record: SNRRecord, skip_steps: int = 0) -> dict[str, dict[str, float]]:
    return average_by_type(mean_snr(record, skip_steps), record.params)


def _depth(name: str) -> int | None:
    for part in name.split("."):
        if part.isdigit():
            return int(part)
    return None


def _registry_names(c: Collection) -> dict[str, str]:
    """Report optimizer label (``slimadam[<rules fingerprint>]``) -> registry name, for tables whose note
    says which rules each sweep used."""
    return {optimizer_label(i.data): i.data.config.optimizer for i in c.runs}


def _lr_rows(c: Collection, task: str, optimizer: str | None = None) -> list[dict]:
    """The report's loss-vs-lr rows of ``c`` under an experiment's labels: task ``task`` (pooling sweeps
    that differ in an override, e.g. SM3 without weight decay) and ``optimizer`` or the registry name."""
    names = _registry_names(c)
    rows = lr_rows(c)
    for r in rows:
        r["task"], r["optimizer"] = task, optimizer or names[r["optimizer"]]
    return rows


def _state_bytes(c: Collection) -> dict[str, int]:
    """Measured optimizer state bytes per optimizer (registry name), from the report's memory rows."""
    names = _registry_names(c)
    return {names[r["optimizer"]]: r["state_bytes"] for r in memory_rows(c)
            if r["optimizer"] in names and r.get("state_bytes") is not None}


def _final(c: Collection) -> tuple[float | None, float | None]:
    """(mean, half range) over seeds of the final loss of a sweep of one optimizer at one lr; (None, None)
    when it has no runs or a seed diverged."""
    rows = lr_rows(c)
    if len(rows) > 1:
        raise ValueError(f"expected runs of one optimizer at one lr, got {len(rows)} (optimizer, lr) cells")
    if not rows or rows[0]["diverged"]:
        return None, None
    return rows[0]["final_mean"], half_range(rows[0])


# ---------------------------------------------------------------------------------------------------------
# (1) SNR by layer type and depth


def _gpt_deep(quick: bool) -> dict:
    """A 4-block gpt (2 in quick): enough depth to see per-depth SNR on a shared CPU."""
    return {"n_layer": 2, "n_head": 2, "d_model": 32} if quick else {"n_layer": 4, "n_head": 2, "d_model": 64}


def plan_snr_by_layer(quick: bool) -> list[Step]:
    # A second seed (model init and batches) checks that the best K per layer type is not seed noise.
    return [SNRStep(key, "gpt", lr=3e-4, steps=40 if quick else 1500, every=10 if quick else 100, seed=seed,
                    overrides=_gpt_deep(quick)) for key, seed in (("gpt", 0), ("gpt-seed1", 1))]


def analyze_snr_by_layer(ctx: Context, quick: bool) -> Analysis:
    if not ctx.has("snr", "gpt"):
        return Analysis([], missing=["snr/gpt.json"])
    rec = ctx.snr("gpt")
    skip = 0 if quick else 100
    by_type = _type_means(rec, skip)
    rows, agree = [], {}
    for t, per_role in by_type.items():
        best, v = _best(per_role)
        paper = PAPER_ROLE.get(t)
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
    panels: dict[str, dict[str, tuple[list[float], list[float]]]] = defaultdict(lambda: defaultdict(lambda: ([], [])))
    for name, per_k in means.items():
        p = info[name]
        per_role = {role(key_dims(k), len(p.shape)): v for k, v in per_k.items()}
        best, _ = _best(per_role)
        d = _depth(name)
        depth_rows.append([name, p.layer_type, "-" if d is None else d, *(per_role.get(r) for r in ROLES), best])
        if d is not None:
            for r in ROLES:
                xs, ys = panels[p.layer_type][r]
                xs.append(d)
                ys.append(per_role.get(r, math.nan))
    t2 = table_from_lists("SNR per parameter (depth = block index)",
                          ["parameter", "layer type", "depth", *(ROLE_NAMES[r] for r in ROLES), "best K"], depth_rows)
    cut = sweep_cutoffs(rec, skip_steps=skip)
    t3 = table_from_lists("Second moments saved vs SNR cutoff (per-parameter rules; paper Fig. 10 top)",
                          ["cutoff", "V saved", "matrices compressed"],
                          [[c.cutoff, c.saved_fraction, f"{c.compressed}/{c.tracked}"] for c in cut],
                          fmt=["g4", "pct", "str"])
    plot = partial(_plots().line_panels, {t: {ROLE_NAMES[r]: v for r, v in s.items()} for t, s in panels.items()},
                   name="snr-by-depth", title="SNR per candidate K vs depth (gpt, small lr)", xlabel="block",
                   ylabel="mean SNR", logy=True)
    tables = [t1, t2, t3]
    missing = []
    if ctx.has("snr", "gpt-seed1"):
        other = _type_means(ctx.snr("gpt-seed1"), skip)
        rows = []
        for t, per_role in by_type.items():
            b0, b1 = _best(per_role)[0], _best(other.get(t, {}))[0]
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


# ---------------------------------------------------------------------------------------------------------
# (2) learning rate vs SNR

LRS_SNR_FULL = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
LRS_SNR_QUICK = (3e-4, 3e-3, 3e-2)


def plan_lr_vs_snr(quick: bool) -> list[Step]:
    lrs = LRS_SNR_QUICK if quick else LRS_SNR_FULL
    return [SNRStep(f"gpt-lr{lr:g}", "gpt", lr=lr, steps=40 if quick else 1000, every=10 if quick else 100,
                    overrides=_gpt_deep(quick)) for lr in lrs]


def analyze_lr_vs_snr(ctx: Context, quick: bool) -> Analysis:
    lrs = LRS_SNR_QUICK if quick else LRS_SNR_FULL
    have = [lr for lr in lrs if ctx.has("snr", f"gpt-lr{lr:g}")]
    missing = [f"snr/gpt-lr{lr:g}.json" for lr in lrs if lr not in have]
    if not have:
        return Analysis([], missing=missing)
    skip = 0 if quick else 100
    recs = {lr: ctx.snr(f"gpt-lr{lr:g}") for lr in have}
    means = {lr: _type_means(r, skip) for lr, r in recs.items()}
    types = [t for t in means[have[0]]]
    rows, best_rows, falls = [], [], {}
    panel: dict[str, tuple[list[float], list[float]]] = {}
    for t in types:
        r0 = PAPER_ROLE.get(t) or _best(means[have[0]][t])[0]
        vals = [means[lr][t].get(r0, math.nan) for lr in have]
        # "falls with lr": SNR at the largest lr below SNR at the smallest, and the Spearman sign over lrs
        pairs = sum(1 for i in range(len(vals) - 1) if vals[i + 1] < vals[i])
        falls[t] = {"first_vs_last": vals[-1] < vals[0], "decreasing_steps": f"{pairs}/{len(vals) - 1}"}
        rows.append([t, ROLE_NAMES[r0], *vals, f"{pairs}/{len(vals) - 1}", "yes" if vals[-1] < vals[0] else "no"])
        best_rows.append([t, *(f"{_best(means[lr][t])[0]} ({_best(means[lr][t])[1]:.3g})" for lr in have)])
        panel[t] = ([float(x) for x in have], vals)
    saved = [[f"{lr:g}", derive_rules(recs[lr], 1.0, skip_steps=skip).saved_fraction,
              recs[lr].run.get("first_loss"), recs[lr].run.get("last_loss"), recs[lr].run.get("diverged_at")]
             for lr in have]
    t1 = table_from_lists(
        "SNR of the paper's K (embedding/pos: embed dim) per layer type vs peak lr",
        ["layer type", "K", *(f"lr {lr:g}" for lr in have), "decreasing steps", "SNR(max lr) < SNR(min lr)"], rows,
        f"gpt {_gpt_deep(quick)}, AdamW, {recs[have[0]].run.get('steps_done')} steps per lr, SNR averaged over "
        f"measured steps > {skip} and over depth.")
    t2 = table_from_lists("Best K (its SNR) per layer type vs lr", ["layer type", *(f"lr {lr:g}" for lr in have)],
                          best_rows)
    t3 = table_from_lists("Second moments saved at cutoff 1 (per-parameter rules) and loss vs lr",
                          ["lr", "V saved", "first loss", "last loss (mean last 10)", "diverged at"], saved,
                          fmt=["str", "pct", "g4", "g4", "g4"])
    plot = partial(_plots().line_panels, {"all": panel}, name="snr-vs-lr", title="SNR of the paper's K vs lr (gpt)",
                   xlabel="peak lr", ylabel="mean SNR", logx=True, logy=True)
    return Analysis([t1, t2, t3], [plot], {"falls_with_lr": falls, "by_lr": {f"{lr:g}": means[lr] for lr in have}},
                    missing)


# ---------------------------------------------------------------------------------------------------------
# (3) vocabulary size vs compressibility of the token dim

VOCABS_FULL = (256, 1024, 4096)
VOCABS_QUICK = (256,)
# (K_embedding, K_head): "embed" = dim 1 of (vocab, dim), "token" = dim 0, "none" = Adam's full V.
VOCAB_CHOICES = (("embed", "embed"), ("token", "none"), ("none", "token"), ("token", "token"))


def _choice_key(emb: str, head: str) -> str:
    return f"emb-{emb}_head-{head}"


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
    panel: dict[str, tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
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
        base, sp = _final(ctx.runs(f"v{v}-adamw"))
        if base is None:
            missing.append(f"runs/v{v}-adamw")
            continue
        row = [v, (base, sp)]
        for emb, head in VOCAB_CHOICES:
            val, sp = _final(ctx.runs(f"v{v}-{_choice_key(emb, head)}"))
            gap = None if val is None else val - base
            row.append(None if gap is None else (gap, sp))
            findings["gap"].setdefault(_choice_key(emb, head), {})[v] = gap
            if gap is not None:
                xs, ys = panel[f"emb={emb}, head={head}"]
                xs.append(v)
                ys.append(gap)
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
    plot = partial(_plots().line_panels, {"all": dict(panel)}, name="vocab-gap",
                   title="Loss gap vs Adam by vocabulary size (linear-lm)", xlabel="BPE vocabulary size",
                   ylabel="val loss gap (nats)", logx=True)
    return Analysis([t1, t2], [plot], findings, missing)


# ---------------------------------------------------------------------------------------------------------
# (4) initialisation

INITS = ("mitchell", "torch")


def plan_init(quick: bool) -> list[Step]:
    return [SNRStep(f"gpt-{init}", "gpt", lr=3e-4, steps=40 if quick else 1000, every=10 if quick else 100,
                    overrides={**_gpt_deep(quick), "init": init}) for init in INITS]


def analyze_init(ctx: Context, quick: bool) -> Analysis:
    have = [i for i in INITS if ctx.has("snr", f"gpt-{i}")]
    if not have:
        return Analysis([], missing=[f"snr/gpt-{i}.json" for i in INITS])
    skip = 0 if quick else 100
    means = {i: _type_means(ctx.snr(f"gpt-{i}"), skip) for i in have}
    rows = []
    for t in means[have[0]]:
        for i in have:
            per = means[i].get(t, {})
            best, _ = _best(per)
            rows.append([t, i, *(per.get(r, math.nan) for r in ROLES), best,
                         "residual projection" if t in ("attn_out", "mlp_down") else ""])
    losses = [[i, ctx.snr(f"gpt-{i}").run.get("first_loss"), ctx.snr(f"gpt-{i}").run.get("last_loss")] for i in have]
    t1 = table_from_lists(
        "SNR per layer type under Mitchell init (std 0.02, residual projections 0.02/sqrt(2L)) vs PyTorch default "
        "init", ["layer type", "init", *(ROLE_NAMES[r] for r in ROLES), "best K", ""], rows,
        f"gpt {_gpt_deep(quick)}, AdamW lr 3e-4, SNR averaged over measured steps > {skip} and over depth.")
    t2 = table_from_lists("Training loss per init", ["init", "first loss", "last loss (mean last 10)"], losses)
    return Analysis([t1, t2], [], {"by_init": means}, [f"snr/gpt-{i}.json" for i in INITS if i not in have])


# ---------------------------------------------------------------------------------------------------------
# (5) headline: lr sweeps of SlimAdam and the low-memory baselines on four tasks

HEADLINE_OPTIMIZERS = ("adamw", "slimadam", "adalayer", "adalayer+ln+tl", "adam-mini", "adafactor", "lion")
# SM3 (pytorch-optimizer) has no weight decay: the registry refuses weight_decay > 0, so it runs with 0.
NO_WEIGHT_DECAY = ("sm3",)


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
    for h in (HEADLINE_QUICK if quick else HEADLINE_FULL):
        out.append(SNRStep(f"{h.task}-proxy", h.task, lr=h.proxy_lr, steps=h.steps, every=10 if quick else 25))
        out.append(RulesStep(f"{h.task}-proxy", f"{h.task}-proxy", cutoff=1.0))
        out.append(SweepStep(h.task, h.task, optimizers, h.lrs, h.seeds, h.steps, rules=f"{h.task}-proxy"))
        if not quick:
            out.append(SweepStep(f"{h.task}-sm3", h.task, NO_WEIGHT_DECAY, h.lrs, h.seeds, h.steps,
                                 overrides={"weight_decay": 0.0}))
    return out


def analyze_headline(ctx: Context, quick: bool) -> Analysis:
    tables, plots, findings, missing = [], [], {}, []
    known = (*HEADLINE_OPTIMIZERS, *NO_WEIGHT_DECAY)
    for h in (HEADLINE_QUICK if quick else HEADLINE_FULL):
        c = ctx.runs(h.task, f"{h.task}-sm3")
        if not c.runs:
            missing.append(f"runs/{h.task}")
            continue
        rows = _lr_rows(c, h.task)
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
        state = _state_bytes(c)
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
        plots.append(partial(_plots().lr_curves, rows))
        if adam_best is not None:
            at_best = Collection(runs=[i for i in c.runs if i.data.config.lr == adam_best])
            step_table = _val_vs_step(at_best, opts, f"{h.task}: validation loss vs step at AdamW's best lr "
                                                     f"{adam_best:g}")
            if step_table.rows:
                tables.append(step_table)
                plots.append(partial(_plots().loss_curves, at_best, task_of=lambda r, t=h.task: t))
        if ctx.has("rules", f"{h.task}-proxy"):
            rules = ctx.rules(f"{h.task}-proxy")
            findings[f"{h.task}_proxy_rules_saved_fraction"] = rules["provenance"].get("derived", {}).get("saved_fraction")
        findings[h.task] = {"best": best, "state_bytes": mem, "adam_best_lr": adam_best}
    return Analysis(tables, plots, findings, missing)


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


# ---------------------------------------------------------------------------------------------------------
# (6) rule transfer from a small proxy to a wider, deeper model

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
        k_rows = [[t, choice.get("proxy", {}).get(t, "-"), choice.get("target", {}).get(t, "-"),
                   PAPER_ROLE.get(t, "none"),
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
    rows, state = [], {}
    for v in variants:
        c = ctx.runs(v)  # one sweep at a time: the proxy's and the target's rules may be the same file content
        if not c.runs:
            missing.append(f"runs/{v}")
            continue
        rows += _lr_rows(c, "target gpt", optimizer=v)
        state[v] = next(iter(_state_bytes(c).values()), None)
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
    plots = [partial(_plots().lr_curves, rows)] if rows else []
    return Analysis(tables, plots, {"final_val": findings, "rules": choice}, missing)


# ---------------------------------------------------------------------------------------------------------
# The catalogue

EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in [
    Experiment("snr-by-layer", "SNR by layer type and depth (gpt, small lr)",
               "Query/key compress along fan_in; value/output and MLP along fan_out; embedding/head along the "
               "embedding dim, never the token dim; norms uncompressed (paper Sec. 4-5).",
               plan_snr_by_layer, analyze_snr_by_layer),
    Experiment("lr-vs-snr", "Learning rate vs compressibility (gpt)",
               "Larger learning rates give lower SNR, i.e. less compressible second moments (paper Sec. 4).",
               plan_lr_vs_snr, analyze_lr_vs_snr),
    Experiment("vocab", "Vocabulary size vs token-dim compression (linear-lm, BPE)",
               "Compressing the embedding/head along the token dim hurts more as the vocabulary grows.",
               plan_vocab, analyze_vocab),
    Experiment("init", "Mitchell vs PyTorch default initialisation (gpt)",
               "Initialisation changes the SNR of the residual projections (attention output, MLP down).",
               plan_init, analyze_init),
    Experiment("headline", "lr sweeps of SlimAdam and low-memory baselines (gpt, cnn, finetune, vit)",
               "SlimAdam tracks Adam across learning rates; AdaLayer and Adam-mini degrade at Adam's optimal lr.",
               plan_headline, analyze_headline),
    Experiment("transfer", "Rules from a small proxy gpt applied to a wider, deeper gpt",
               "Depth-averaged rules from a small proxy transfer to larger models of the same family.",
               plan_transfer, analyze_transfer),
]}


def list_experiments() -> list[Experiment]:
    return list(EXPERIMENTS.values())


def get_experiment(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def default_out(name: str, quick: bool) -> Path:
    return Path("results") / "experiments" / (f"{name}-quick" if quick else name)


@dataclass
class StepRecord:
    key: str
    kind: str
    command: str
    status: str  # "ran" | "skipped (output exists)" | "error"
    wall_time_s: float
    message: str = ""

    def to_dict(self) -> dict:
        return {"key": self.key, "kind": self.kind, "command": self.command, "status": self.status,
                "wall_time_s": self.wall_time_s, "message": self.message}


@dataclass
class ExperimentResult:
    experiment: Experiment
    quick: bool
    out: Path
    steps: list[StepRecord]
    analysis: Analysis
    errors: list[str]
    wall_time_s: float
    files: list[Path] = field(default_factory=list)


def _done(step: Step, out: Path) -> bool:
    return step.done(out) if isinstance(step, SweepStep) else step.output(out).exists()


def run_experiment(name: str, *, quick: bool = False, out: str | Path | None = None, analyze_only: bool = False,
                   threads: int | None = 1, on_step: Callable[[Step, str], None] | None = None,
                   on_event: Callable[[str, Any, Any], None] | None = None) -> ExperimentResult:
    """Run experiment ``name`` (its missing steps, in order), analyse its files, write its outputs.

    Args:
        name: see :data:`EXPERIMENTS`.
        quick: the CI-sized variant.
        out: folder (default ``results/experiments/NAME`` or ``NAME-quick``).
        analyze_only: compute nothing; tables from the files that exist (missing ones are listed).
        threads: torch threads during the steps (restored afterwards); None leaves torch's setting.
        on_step: called as ``on_step(step, "start" | "end")`` (progress).
        on_event: sweep progress callback (see :func:`slimbench.bench.run_sweep`).
    """
    exp = get_experiment(name)
    folder = Path(out) if out is not None else default_out(name, quick)
    folder.mkdir(parents=True, exist_ok=True)
    ctx = Context(folder, on_event)
    t0 = time.perf_counter()
    records: list[StepRecord] = []
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        for step in exp.plan(quick):
            kind = type(step).__name__
            if analyze_only or _done(step, folder):
                records.append(StepRecord(step.key, kind, step.command(folder),
                                          "skipped (output exists)" if _done(step, folder) else "not run", 0.0))
                continue
            if on_step:
                on_step(step, "start")
            s0 = time.perf_counter()
            before = len(ctx.errors)
            step.execute(folder, ctx)
            status = "ran" if len(ctx.errors) == before else "ran with errors"
            records.append(StepRecord(step.key, kind, step.command(folder), status, time.perf_counter() - s0,
                                      "; ".join(ctx.errors[before:])))
            if on_step:
                on_step(step, "end")
    finally:
        torch.set_num_threads(old_threads)
    analysis = exp.analyze(ctx, quick)
    result = ExperimentResult(exp, quick, folder, records, analysis, ctx.errors, time.perf_counter() - t0)
    result.files = write_outputs(result, threads)
    return result


def _merge_wall_times(path: Path, records: list[StepRecord]) -> list[dict]:
    """Keep the wall time of steps that ran in an earlier invocation (a resumed experiment)."""
    old = {}
    if path.exists():
        try:
            old = {s["key"] + s["kind"]: s for s in json.loads(path.read_text()).get("steps", [])}
        except (ValueError, KeyError, TypeError):
            old = {}
    out = []
    for r in records:
        d = r.to_dict()
        prev = old.get(r.key + r.kind)
        if r.status != "ran" and r.wall_time_s == 0 and prev and prev.get("status", "").startswith("ran"):
            d = {**prev, "command": r.command}
        out.append(d)
    return out


def write_outputs(result: ExperimentResult, threads: int | None = 1) -> list[Path]:
    """Plots (drawn by slimbench.report), ``summary.json`` (tables, findings, steps with commands and wall
    times) and ``tables.md`` (the tables as report.md renders them)."""
    from slimbench.env import provenance
    from slimbench.report.markdown import table_markdown  # loads matplotlib: see _plots

    out, a, exp = result.out, result.analysis, result.experiment
    images = [(title, Path(path)) for draw in a.plots for title, path in draw(out)]
    summary_path = out / "summary.json"
    steps = _merge_wall_times(summary_path, result.steps)
    obj = {"format": EXPERIMENTS_FORMAT, "version": EXPERIMENTS_VERSION, "experiment": exp.name,
           "title": exp.title, "paper_claim": exp.claim, "quick": result.quick,
           "command": f"python -m slimbench experiment {exp.name}" + (" --quick" if result.quick else ""),
           "threads": threads, "steps": steps,
           "compute_wall_time_s": sum(s["wall_time_s"] for s in steps),
           "tables": _jsonable([t.to_dict() for t in a.tables]),
           "plots": [{"title": title, "file": path.name} for title, path in images],
           "findings": _jsonable(a.findings), "missing": a.missing,
           # errors of this invocation, plus those of steps that ran (with errors) in an earlier one
           "errors": result.errors + [m for s in steps if s["status"] == "ran with errors" and s not in
                                      [r.to_dict() for r in result.steps] for m in s["message"].split("; ") if m],
           # the steps ran with `threads` torch threads (restored before this call, so record it here)
           "provenance": {**provenance(), **({"threads": threads} if threads else {})}}
    files = [write_json_atomic(summary_path, obj)]
    md = [f"# {exp.title}", "", f"Paper: {exp.claim}", "",
          (f"Command: `{obj['command']}` (torch threads: {threads}); "
           f"compute wall time {obj['compute_wall_time_s']:.0f} s."), ""]
    if a.missing:
        md += ["Missing outputs (not run or failed): " + ", ".join(a.missing), ""]
    for t in a.tables:
        md += [table_markdown(t, level=2), ""]
    for title, path in images:
        md += [f"![{title}]({path.name})", ""]
    tables_path = out / "tables.md"
    write_atomic(tables_path, "\n".join(md))
    files.append(tables_path)
    return files + [path for _, path in images]


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return x
