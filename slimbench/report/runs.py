"""What makes sweep runs comparable, shared by every section, the figures and the regression gate.

* **task**: a task, preset and its overrides (``gpt/tiny steps=50``); runs of different overrides are
  different experiments and never pooled.
* **optimizer**: the registry name, plus the rules' fingerprint when they are not the optimizer's
  default (the key); :func:`display_name` is how a person names it ("SlimAdam (paper rules)").
* **step ratio** of a sweep run: its fastest step over the fastest step of the AdamW run of the same task,
  lr and seed (the meaning of :mod:`slimbench.bench.extra_info`, for whole training steps).
"""
from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from slimbench.report.load import Item
from slimbench.report.table import finite

MIN_TIMED_STEPS = 10  # fewer (a run that diverged early) give no step time: the minimum of 3 steps is noise

# How people write the registry's optimizers (papers, READMEs); unknown names are shown as registered.
NAMES = {"adamw": "AdamW", "adam": "Adam", "sgd": "SGD", "slimadam": "SlimAdam", "adalayer": "AdaLayer",
         "adalayer+ln+tl": "AdaLayer+LN+TL", "adam-mini": "Adam-mini", "adafactor": "Adafactor",
         "adafactor-tf": "Adafactor (TF)", "sm3": "SM3", "lion": "Lion", "came": "CAME", "galore": "GaLore"}


def task_label(result) -> str:
    """``task/preset k=v ...``: what makes runs comparable (overrides included, lr/seed/optimizer not)."""
    cfg = result.config
    extra = " ".join(f"{k}={v}" for k, v in sorted(cfg.overrides.items()))
    if cfg.divergence_factor != 3.0:
        extra += f" div>{cfg.divergence_factor:g}x"
    return f"{cfg.task}/{cfg.preset}" + (f" {extra}" if extra else "")


def optimizer_label(result) -> str:
    """Registry name, plus the rules when they are not the optimizer's default."""
    fp = result.optimizer.get("rules_fingerprint") or "none"
    return result.config.optimizer if fp in ("none", "paper") else f"{result.config.optimizer}[{fp}]"


def rules_names(rules_items: Iterable[Item]) -> dict[str, str]:
    """{rules fingerprint: name} for the rules files of a collection (what a run's fingerprint points to,
    when the report was given the rules file): "SNR rules, cutoff C" for rules derived from an SNR record
    (a cutoff or an SNR file in the provenance), else "rules <file name>" (hand-written rules, e.g. an
    experiment's choices), so two hand-written files never share one name."""
    from slimbench.rules import fingerprint

    out = {}
    for item in rules_items:
        rs = item.data
        prov = rs.provenance or {}
        if rs.cutoff is None and not prov.get("snr_file") and "derived" not in prov:
            src = str(rs.source or getattr(item, "path", "") or "rules")
            out[fingerprint(rs)] = "rules " + src.replace(chr(92), "/").rsplit("/", 1)[-1].removesuffix(".json")
            continue
        cutoff = f", cutoff {float(rs.cutoff)!r}" if rs.cutoff is not None else ""
        by = ", by layer type" if rs.by == "layer_type" else ""
        out[fingerprint(rs)] = f"SNR rules{cutoff}{by}"
    return out


def display_name(result, rules: Mapping[str, str] | None = None) -> str:
    """How a person names a run's optimizer: "AdamW", "SlimAdam (paper rules)", "SlimAdam (SNR rules,
    cutoff 1.0)"; an unknown rules file by its file name, never by a hash alone."""
    name = NAMES.get(result.config.optimizer, result.config.optimizer)
    fp = result.optimizer.get("rules_fingerprint") or "none"
    if fp == "none":
        return name
    if fp == "paper":
        return f"{name} (paper rules)"
    if rules and fp in rules:
        return f"{name} ({rules[fp]})"
    src = result.optimizer.get("rules") or result.config.rules
    if isinstance(src, str) and src not in ("paper", "none"):
        return f"{name} (rules {src.replace(chr(92), '/').rsplit('/', 1)[-1]})"
    return f"{name} (custom rules {fp})"


def group_runs(runs: Iterable[Item], key: Callable) -> dict[Any, list[Item]]:
    """Runs grouped by ``key(result)``, in load order."""
    out: dict[Any, list[Item]] = defaultdict(list)
    for item in runs:
        out[key(item.data)].append(item)
    return out


def stats(values: Sequence[float | None]) -> dict:
    """mean, sample std, min, max and n over the finite values."""
    vals = [v for v in values if finite(v)]
    return {"mean": statistics.fmean(vals) if vals else None,
            "std": statistics.stdev(vals) if len(vals) > 1 else None,
            "min": min(vals) if vals else None, "max": max(vals) if vals else None, "n": len(vals)}


def min_step_time(result) -> float | None:
    """Fastest training step of a run. On shared cores other processes only add time, so the minimum is
    the stable statistic: between two identical sweeps, ratios of minima to AdamW's moved < 15%, ratios
    of medians up to 80%."""
    times = [t for t in result.step_time_s if finite(t)]
    return min(times) if len(times) >= MIN_TIMED_STEPS else None


def adamw_step_times(runs: Iterable[Item]) -> dict[tuple, float | None]:
    """{(task, lr, seed): fastest step of the AdamW run}: the reference of a sweep run's step ratio."""
    return {(task_label(i.data), i.data.config.lr, i.data.config.seed): min_step_time(i.data)
            for i in runs if optimizer_label(i.data) == "adamw"}


def run_step_ratio(result, reference: Mapping[tuple, float | None]) -> float | None:
    """A run's fastest step over the AdamW run's of the same task, lr and seed (None without one)."""
    t = min_step_time(result)
    ref = reference.get((task_label(result), result.config.lr, result.config.seed))
    return t / ref if t is not None and finite(ref) and ref else None
