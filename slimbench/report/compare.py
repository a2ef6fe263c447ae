"""Regression gate: compare a NEW set of results with a BASELINE, metric by metric, with small check objects.

    checks = [parse_check(s) for s in ("state_bytes:exact", "final_loss:5%", "diverged:0", "step_ratio:50%")]
    result = compare(load(["results/baseline"]), load(["/tmp/new"]), checks)
    result.failed            # True if anything regressed (the CLI exits 1)
    result.moved()           # the deltas worth showing: regressed, changed, improved, missing

A check is parsed from ``metric:threshold`` as pytest-benchmark's ``--benchmark-compare-fail=mean:5%``:
``exact`` (any change fails: state bytes are deterministic, a change means the optimizer's state changed,
update the baseline on purpose), ``N%`` (fails if worse by more than N% of the baseline value) or a number
(fails if worse by more than that absolute amount: ``diverged:0``, ``final_loss:0.02``). "Worse" is
larger, except for metrics where larger is better (``saved_fraction``).

Entries are matched by key: a sweep run by its ``run_id`` (task, preset, optimizer, lr, seed, rules and
a hash of the overrides: the same command gives the same ids), a benchmark by its pytest ``fullname``,
a profile / audit row by model, device and optimizer, a sweep's lr band by task and optimizer. Metrics of
an entry (None when not measured):

    state_bytes      optimizer state bytes (ledger)              runs, step/training benchmarks, profiles, audits
    saved_fraction   share of Adam's second moments not held     same
    final_loss       final validation loss (None if diverged)    runs, training benchmarks
    best_loss        best validation loss                        runs, training benchmarks
    diverged         1 if the run diverged, else 0               runs, training benchmarks
    step_ratio       step time / the same kind of AdamW step's,  step and fused benchmarks; runs (vs the
                     same run, ratio of minima (extra_info)      AdamW run of the same task, lr and seed)
    lr_width         width hi/lo of the lr band within 5% of     sweeps, per task and optimizer
                     the best loss (larger is better)
    step_time_s      absolute step time, min (machine-dependent) benchmarks, runs
    peak_bytes       peak memory of a step                       step benchmarks, profiles
    transient_bytes  extra memory during step()                  step benchmarks, profiles

Absolute times never gate by default: a baseline from another machine would fail or pass by accident.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from slimbench.bench import extra_info as xi
from slimbench.bench.best_lr import lr_means, lr_width
from slimbench.report.load import Collection
from slimbench.report.runs import (adamw_step_times, group_runs, min_step_time, optimizer_label, run_step_ratio,
                                   task_label)

METRICS: dict[str, str] = {
    "state_bytes": "optimizer state bytes",
    "saved_fraction": "share of Adam's second moments not held",
    "final_loss": "final validation loss",
    "best_loss": "best validation loss",
    "diverged": "1 if the run diverged",
    "step_ratio": "step time / the same kind of AdamW step's time, same run",
    "lr_width": "width (hi/lo) of the lr band within 5% of the best loss",
    "step_time_s": "step time in seconds (machine-dependent)",
    "peak_bytes": "peak memory of a step",
    "transient_bytes": "extra memory during step()",
}
HIGHER_IS_BETTER = frozenset({"saved_fraction", "lr_width"})
DEFAULT_CHECKS = ("state_bytes:exact", "final_loss:5%", "diverged:0", "step_ratio:50%")


# ---------------------------------------------------------------------------------------------------------
# checks


def _worse(metric: str, base: float, new: float) -> float:
    """How much worse ``new`` is than ``base`` (positive = worse), in the metric's own units."""
    return base - new if metric in HIGHER_IS_BETTER else new - base


@dataclass(frozen=True)
class Check:
    """A gate on one metric. Subclasses say when a change is a regression."""

    metric: str

    def fails(self, base: float, new: float) -> bool:
        raise NotImplementedError

    def improves(self, base: float, new: float) -> bool:
        """Better by more than the tolerance (smaller moves are noise, shown as 'within')."""
        return False

    @property
    def text(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class ExactCheck(Check):
    """Any change fails (deterministic quantities: state bytes, saved fraction)."""

    def fails(self, base: float, new: float) -> bool:
        return new != base

    @property
    def text(self) -> str:
        return f"{self.metric}:exact"


class _ToleranceCheck(Check):
    """Fails if worse, and improves if better, by more than :meth:`tolerance` of the baseline."""

    def tolerance(self, base: float) -> float:
        raise NotImplementedError

    def fails(self, base: float, new: float) -> bool:
        return _worse(self.metric, base, new) > self.tolerance(base)

    def improves(self, base: float, new: float) -> bool:
        return -_worse(self.metric, base, new) > self.tolerance(base)


@dataclass(frozen=True)
class PercentageCheck(_ToleranceCheck):
    """Fails if worse by more than ``percent`` % of the baseline's magnitude."""

    percent: float = 5.0

    def tolerance(self, base: float) -> float:
        return abs(base) * self.percent / 100

    @property
    def text(self) -> str:
        return f"{self.metric}:{self.percent:g}%"


@dataclass(frozen=True)
class DifferenceCheck(_ToleranceCheck):
    """Fails if worse by more than ``max_diff`` (absolute, in the metric's units)."""

    max_diff: float = 0.0

    def tolerance(self, base: float) -> float:
        return self.max_diff

    @property
    def text(self) -> str:
        return f"{self.metric}:{self.max_diff:g}"


_CHECK_RE = re.compile(r"^\s*([a-z_]+)\s*:\s*(exact|[-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?%?)\s*$")


def parse_check(text: str) -> Check:
    """``metric:exact``, ``metric:N%`` or ``metric:N``; ValueError naming the metrics otherwise."""
    m = _CHECK_RE.match(text)
    if not m:
        raise ValueError(f"bad check {text!r}: expected METRIC:exact, METRIC:N% or METRIC:N "
                         f"(e.g. state_bytes:exact, final_loss:5%, diverged:0)")
    metric, threshold = m.groups()
    if metric not in METRICS:
        raise ValueError(f"bad check {text!r}: unknown metric {metric!r}; metrics: {', '.join(METRICS)}")
    if threshold == "exact":
        return ExactCheck(metric)
    if threshold.endswith("%"):
        value = float(threshold[:-1])
        if value < 0:
            raise ValueError(f"bad check {text!r}: a percentage must be >= 0")
        return PercentageCheck(metric, value)
    value = float(threshold)
    if value < 0:
        raise ValueError(f"bad check {text!r}: a difference must be >= 0")
    return DifferenceCheck(metric, value)


# ---------------------------------------------------------------------------------------------------------
# entries: what each side measured


@dataclass
class Entry:
    """One comparable thing (a run, a benchmark, a profile row) and its metrics."""

    key: str
    kind: str
    metrics: dict[str, float | None]
    source: str


def _num(x: Any) -> float | None:
    if isinstance(x, bool):
        return float(x)
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def entries(c: Collection) -> dict[str, Entry]:
    """Every entry of a collection by key (see the module docstring)."""
    out: dict[str, Entry] = {}
    adamw_step = adamw_step_times(c.runs)
    for i in c.runs:
        r, s = i.data, i.data.summary
        t = min_step_time(r)
        out[f"run {r.config.run_id}"] = Entry(f"run {r.config.run_id}", "run", {
            "state_bytes": _num(s.get("state_bytes")), "saved_fraction": _num(r.memory.get("second_moment_saved_fraction")),
            "final_loss": _num(s.get("final_val_loss")), "best_loss": _num(s.get("best_val_loss")),
            "diverged": 1.0 if r.status == "diverged" else 0.0,
            "step_ratio": _num(run_step_ratio(r, adamw_step)), "step_time_s": _num(t)}, i.path)
    for (task, opt), items in group_runs(c.runs, lambda r: (task_label(r), optimizer_label(r))).items():
        if len({i.data.config.lr for i in items}) < 2:
            continue  # one lr has no band to measure
        losses: dict[float, list] = {}
        for i in items:
            final = None if i.data.status == "diverged" else i.data.summary.get("final_val_loss")
            losses.setdefault(i.data.config.lr, []).append(final)
        key = f"lr band {task} {opt}"
        out[key] = Entry(key, "sweep", {"lr_width": _num(lr_width(lr_means(losses)))}, items[0].path)
    for item in c.benchmarks:
        for b in item.data["benchmarks"]:
            e, st = b.get("extra_info") or {}, b.get("stats") or {}
            key = f"bench {b.get('fullname') or b['name']}"
            kind = e.get("kind") or "benchmark"
            m: dict[str, float | None] = {"step_time_s": _num(st.get("min"))}
            if kind == xi.KIND_STEP:
                m.update({"state_bytes": _num(e.get("state_bytes")),
                          "saved_fraction": _num(e.get("second_moment_saved_fraction")),
                          "step_ratio": xi.step_ratio(b),
                          "peak_bytes": _num(e.get("peak_step_bytes")), "transient_bytes": _num(e.get("transient_bytes"))})
            elif kind == xi.KIND_TRAINING:
                m = {"state_bytes": _num(e.get("state_bytes")),
                     "saved_fraction": _num(e.get("second_moment_saved_fraction")),
                     "final_loss": _num(e.get("final_val_loss")), "best_loss": _num(e.get("best_val_loss")),
                     "diverged": 1.0 if e.get("diverged") else 0.0}  # the whole run's time is not a step time
            elif kind == xi.KIND_FUSED:
                m.update({"state_bytes": _num((e.get("state_bytes") or {}).get(e.get("path"))),
                          "step_ratio": xi.step_ratio(b)})
            out[key] = Entry(key, kind, m, item.path)
    for item in c.profiles:
        d = item.data
        for r in d.get("optimizers", []):
            if r.get("status") != "ok":
                continue
            key = f"profile {d.get('model')} {d.get('device')} {d.get('dtype')} {r['optimizer']}"
            out[key] = Entry(key, "profile", {
                "state_bytes": _num(r.get("state_bytes")), "saved_fraction": _num(r.get("second_moment_saved_fraction")),
                "peak_bytes": _num(r.get("peak_bytes")), "transient_bytes": _num(r.get("transient_bytes"))}, item.path)
    for item in c.audits:
        d = item.data
        for r in d.get("optimizers", []):
            if r.get("status") != "ok":
                continue
            key = f"audit {d.get('model')} {d.get('dtype')} {r['optimizer']}"
            out[key] = Entry(key, "audit", {"state_bytes": _num(r.get("state_bytes")),
                                            "saved_fraction": _num(r.get("second_moment_saved_fraction"))}, item.path)
    return out


# ---------------------------------------------------------------------------------------------------------
# the comparison


@dataclass
class Delta:
    """One metric of one entry, baseline vs new, and what the check made of it.

    status: ``regressed`` (the check failed), ``changed`` (an exact check saw a change: fails too),
    ``improved`` (better by more than the tolerance), ``within`` (moved, inside the tolerance), ``same``, ``missing`` (in the baseline,
    not in new: fails unless allowed), ``new`` (not in the baseline: informational).
    """

    key: str
    metric: str
    baseline: float | None
    new: float | None
    check: str
    status: str
    baseline_source: str | None = None
    new_source: str | None = None

    @property
    def failed(self) -> bool:
        return self.status in ("regressed", "changed", "missing")

    @property
    def change(self) -> float | None:
        if self.baseline is None or self.new is None:
            return None
        return self.new - self.baseline

    @property
    def relative(self) -> float | None:
        ch = self.change
        if ch is None or not self.baseline:
            return None
        return ch / abs(self.baseline)

    def to_dict(self) -> dict:
        return {"key": self.key, "metric": self.metric, "baseline": self.baseline, "new": self.new,
                "change": self.change, "relative": self.relative, "check": self.check, "status": self.status,
                "failed": self.failed, "baseline_source": self.baseline_source, "new_source": self.new_source}


@dataclass
class Comparison:
    checks: list[Check]
    deltas: list[Delta]
    baseline_entries: int
    new_entries: int
    allow_missing: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(d.failed and not (d.status == "missing" and self.allow_missing) for d in self.deltas)

    @property
    def regressions(self) -> list[Delta]:
        return [d for d in self.deltas if d.failed and not (d.status == "missing" and self.allow_missing)]

    def moved(self) -> list[Delta]:
        """Deltas worth showing: everything but ``same`` and ``within``."""
        return [d for d in self.deltas if d.status not in ("same", "within")]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for d in self.deltas:
            out[d.status] = out.get(d.status, 0) + 1
        return out

    def to_dict(self) -> dict:
        return {"checks": [c.text for c in self.checks], "failed": self.failed, "counts": self.counts(),
                "baseline_entries": self.baseline_entries, "new_entries": self.new_entries,
                "allow_missing": self.allow_missing, "notes": self.notes,
                "deltas": [d.to_dict() for d in self.deltas]}


def _judge(check: Check, base: float | None, new: float | None) -> str:
    if base is None and new is None:
        return "same"
    if base is None:
        return "improved"  # e.g. a run that diverged before and finishes now
    if new is None:
        return "regressed"  # e.g. a final loss that no longer exists: the run diverged
    if check.fails(base, new):
        return "changed" if isinstance(check, ExactCheck) else "regressed"
    if new == base:
        return "same"
    return "improved" if check.improves(base, new) else "within"


def compare(baseline: Collection, new: Collection, checks: Sequence[Check | str] = DEFAULT_CHECKS, *,
            allow_missing: bool = False) -> Comparison:
    """Judge every checked metric of every baseline entry against the same entry in ``new``.

    A metric the baseline entry does not have (None: e.g. no step ratio without an AdamW run) is not
    judged. An entry of the baseline missing from ``new`` fails unless ``allow_missing``.
    """
    parsed = [parse_check(c) if isinstance(c, str) else c for c in checks]
    if not parsed:
        raise ValueError("no checks given")
    base, got = entries(baseline), entries(new)
    deltas: list[Delta] = []
    notes: list[str] = []
    if not base:
        notes.append("the baseline has no comparable entries")
    for key, b in base.items():
        n = got.get(key)
        if n is None:
            deltas.append(Delta(key, "-", None, None, "present", "missing", b.source, None))
            continue
        for check in parsed:
            bv, nv = b.metrics.get(check.metric), n.metrics.get(check.metric)
            if check.metric not in b.metrics or (bv is None and nv is None):
                continue
            deltas.append(Delta(key, check.metric, bv, nv, check.text, _judge(check, bv, nv), b.source, n.source))
    for key, n in got.items():
        if key not in base:
            deltas.append(Delta(key, "-", None, None, "present", "new", None, n.source))
    judged = {d.metric for d in deltas if d.metric != "-"}
    for check in parsed:
        if check.metric not in judged:
            notes.append(f"check {check.text}: no entry of the baseline has {check.metric}")
    return Comparison(parsed, deltas, len(base), len(got), allow_missing, notes)
