"""From an SNR record to SlimAdam rules (paper Sec. 4-5): average, choose K, depth-average, transfer.

Per parameter with >= 2 dims, K* is the candidate with the highest SNR averaged over the measured steps,
if that SNR exceeds the cutoff (default 1.0); otherwise the parameter stays uncompressed. 1-D tensors
always stay uncompressed. With ``depth_average=True`` the SNR is first averaged over every layer of the
same layer type (all blocks' query weights, ...), giving one rule per type that transfers to deeper or
wider models of the same family (the paper's "SlimAdam-mean").

Candidates are compared by role, which is what a type rule can carry to another shape:
``fan_out`` = dim 0, ``fan_in`` = dims 1.., ``both`` = all dims; for a 2-D weight K = (0,), (1,), (0, 1).
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimbench.io import FormatError
from slimbench.layers import LAYER_TYPES
from slimbench.layouts import Layout
from slimbench.rules import Assignment, RuleSet, RulesLike, load_rules, resolve, save_rules
from slimbench.snr.record import ParamInfo, SNRRecord
from slimbench.snr.stats import dims_key, key_dims

ROLES = ("fan_out", "fan_in", "both")
DEFAULT_CUTOFFS = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)


def role(dims: Sequence[int], ndim: int) -> str:
    """The role of candidate K for a tensor with ``ndim`` dims: fan_out, fan_in or both."""
    k = tuple(dims)
    if k == tuple(range(ndim)):
        return "both"
    if k == (0,):
        return "fan_out"
    if k == tuple(range(1, ndim)):
        return "fan_in"
    raise ValueError(f"K={k} is not a candidate for a tensor with {ndim} dims")


def role_dims(name: str, ndim: int) -> tuple[int, ...]:
    """Inverse of :func:`role`."""
    return {"fan_out": (0,), "fan_in": tuple(range(1, ndim)), "both": tuple(range(ndim))}[name]


def saved_entries(shape: Sequence[int], dims: Sequence[int]) -> int:
    """Second-moment entries saved by sharing V along ``dims``: numel - numel / prod(shape[K])."""
    n = math.prod(shape)
    return n - n // math.prod(shape[d] for d in dims) if dims else 0


def _mean(values: Iterable[float]) -> float:
    """Mean ignoring NaN (a step where V had NaN); inf stays inf. No values -> NaN."""
    vals = [v for v in values if not math.isnan(v)]
    return sum(vals) / len(vals) if vals else math.nan


def mean_snr(record: SNRRecord, skip_steps: int = 0) -> dict[str, dict[str, float]]:
    """SNR per parameter and candidate K, averaged over the steps measured after ``skip_steps``.

    ``skip_steps`` drops measurements at steps <= skip_steps: the early transient, where V still remembers
    its zero initialisation and a few gradients (the paper's proxy runs average after it).
    """
    keep = [i for i, s in enumerate(record.steps) if s > skip_steps]
    if not keep:
        where = record.source or "SNR record"
        raise ValueError(f"{where}: no SNR measurements after step {skip_steps} "
                         f"(measured at steps {_steps_text(record.steps)}); lower --skip-steps")
    out: dict[str, dict[str, float]] = {}
    for name, per_k in record.snr.items():
        out[name] = {k: _mean(float(v[i]) for i in keep if v[i] is not None) for k, v in per_k.items()}
    return out


def _steps_text(steps: Sequence[int]) -> str:
    return "none" if not steps else (", ".join(map(str, steps)) if len(steps) <= 6
                                     else f"{steps[0]}, {steps[1]}, ..., {steps[-1]}")


def choose(snr_by_k: Mapping[str, float], cutoff: float) -> str | None:
    """The key of the K with the highest SNR if that SNR exceeds ``cutoff``, else None (no compression).

    Ties go to the K listed first (candidates are listed fan_out, fan_in, both). NaN never wins.
    """
    best, best_v = None, -math.inf
    for k, v in snr_by_k.items():
        if not math.isnan(v) and v > best_v:
            best, best_v = k, v
    return best if best is not None and best_v > cutoff else None


@dataclass(frozen=True)
class ParamRule:
    """The rule one parameter gets: its mean SNR per K, the chosen dims and what they save."""

    name: str
    shape: tuple[int, ...]
    layer_type: str
    snr: dict[str, float]  # dims key ("0", "1", "0,1") -> mean SNR (for depth-averaged: the type's SNR)
    dims: tuple[int, ...]
    saved: int  # second-moment entries saved
    stored_shape: tuple[int, ...] | None = None  # where the weight is stored otherwise (Conv1D, a block)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def dims_entry(self) -> list[int] | str:
        """Dims as a rules file holds them: stored ints where SNR was measured as stored, else the role
        ("fan_out" of a Conv1D weight or of a block), which SlimAdam reads through the weight's layout."""
        if self.stored_shape is None:
            return list(self.dims)
        return role(self.dims, len(self.shape)) if self.dims else "none"

    def snr_by_role(self) -> dict[str, float]:
        return {role(key_dims(k), len(self.shape)): v for k, v in self.snr.items()}

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "layer_type": self.layer_type,
                "snr": dict(self.snr), "dims": list(self.dims), "saved": self.saved}


@dataclass(frozen=True)
class TypeRule:
    """A depth-averaged rule: one layer type, its SNR per role averaged over its layers, the chosen role."""

    layer_type: str
    snr: dict[str, float]  # role -> SNR averaged over layers (each layer's SNR averaged over steps)
    choice: str | None  # role, or None
    layers: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"layer_type": self.layer_type, "snr": dict(self.snr), "dims": self.choice or "none",
                "layers": list(self.layers)}


@dataclass
class Derived:
    """Rules derived from one SNR record at one cutoff, with the memory they save."""

    by: str  # "name" or "layer_type"
    cutoff: float
    skip_steps: int
    steps_used: list[int]
    rows: list[ParamRule]  # every tracked parameter, with the dims its rule gives it
    types: list[TypeRule] = field(default_factory=list)  # filled when by == "layer_type"
    untracked: list[ParamInfo] = field(default_factory=list)  # 1-D and skipped: stay uncompressed
    provenance: dict = field(default_factory=dict)

    @property
    def total_entries(self) -> int:
        """Second-moment entries of plain Adam for the whole model (1-D parameters included)."""
        return sum(r.numel for r in self.rows) + sum(p.numel for p in self.untracked)

    @property
    def saved_entries(self) -> int:
        return sum(r.saved for r in self.rows)

    @property
    def saved_fraction(self) -> float:
        """Fraction of Adam's second moments that the rules remove (paper Fig. 10, top)."""
        total = self.total_entries
        return self.saved_entries / total if total else 0.0

    def entries(self) -> list[dict[str, Any]]:
        """Rule entries for :func:`slimbench.rules.save_rules`."""
        if self.by == "layer_type":
            by_name = {r.name: r for r in self.rows}
            out = []
            for t in self.types:
                members = [by_name[n] for n in t.layers]
                numel = sum(r.numel for r in members)
                out.append({"match": t.layer_type, "dims": t.choice or "none", "snr": dict(t.snr),
                            "layers": list(t.layers),
                            "saved_fraction": (sum(r.saved for r in members) / numel) if numel else 0.0})
            return out
        return [{"match": r.name, "dims": r.dims_entry(), "snr": dict(r.snr),
                 **({"shape": list(r.stored_shape or r.shape)} if not r.name.endswith("]") else {}),
                 "layer_type": r.layer_type, "saved_fraction": r.saved / r.numel if r.numel else 0.0}
                for r in self.rows]

    def ruleset(self) -> RuleSet:
        """The rules as SlimAdam / :func:`apply_rules` take them, without writing a file."""
        entries = self.entries()
        prefix = "" if self.by == "name" else "type:"
        table = {f"{prefix}{e['match']}": e["dims"] for e in entries}
        source = f"rules derived from {self.provenance.get('snr_file') or 'an SNR record'}"
        return RuleSet(table, self.by, self.cutoff, dict(self.provenance), source, tuple(entries))

    def save(self, path: str | os.PathLike) -> Path:
        """Write a rules file that ``SlimAdam(..., rules=path)`` loads directly."""
        prov = dict(self.provenance)
        prov["derived"] = {"skip_steps": self.skip_steps, "steps_used": self.steps_used,
                           "saved_fraction": self.saved_fraction}
        return save_rules(path, self.entries(), by=self.by, cutoff=self.cutoff, provenance=prov)

    def to_dict(self) -> dict:
        return {"by": self.by, "cutoff": self.cutoff, "skip_steps": self.skip_steps,
                "steps_used": self.steps_used, "saved_fraction": self.saved_fraction,
                "rows": [r.to_dict() for r in self.rows], "types": [t.to_dict() for t in self.types]}


def _record_provenance(record: SNRRecord) -> dict:
    """What the rules came from: the SNR run's model, optimizer, schedule and environment."""
    return {"snr_file": record.source, "model": record.model, "run": record.run, "optimizer": record.optimizer,
            "schedule": record.schedule, "steps": record.steps, "snr_provenance": record.provenance}


def average_by_type(means: Mapping[str, Mapping[str, float]],
                    params: Sequence[ParamInfo]) -> dict[str, dict[str, float]]:
    """SNR per role averaged over all layers of each layer type: {layer_type: {role: snr}}.

    Each layer counts once, whatever its size (the paper's "SlimAdam-mean" averages over depth).
    """
    info = {p.name: p for p in params}
    acc: dict[str, dict[str, list[float]]] = {}
    for name, per_k in means.items():
        p = info[name]
        slot = acc.setdefault(p.layer_type, {})
        for k, v in per_k.items():
            slot.setdefault(role(key_dims(k), len(p.shape)), []).append(v)
    return {t: {r: _mean(vals) for r, vals in sorted(per.items(), key=lambda kv: ROLES.index(kv[0]))}
            for t, per in acc.items()}


def derive_rules(record: SNRRecord, cutoff: float = 1.0, *, depth_average: bool = False,
                 skip_steps: int = 0) -> Derived:
    """Choose K per parameter (or per layer type) from an SNR record.

    Args:
        record: an :class:`SNRRecord` (from :func:`load_snr` or a tracker).
        cutoff: compress only if the best candidate's mean SNR exceeds this (paper default 1.0).
        depth_average: one rule per layer type from the SNR averaged over its layers.
        skip_steps: ignore measurements at steps <= skip_steps (initial transient).
    """
    if not cutoff >= 0 or math.isinf(cutoff):
        raise ValueError(f"cutoff must be a finite number >= 0, got {cutoff}")
    means = mean_snr(record, skip_steps)
    info = {p.name: p for p in record.params}
    rows: list[ParamRule] = []
    types: list[TypeRule] = []
    if depth_average:
        averaged = average_by_type(means, record.params)
        choice = {t: choose(per_role, cutoff) for t, per_role in averaged.items()}
        members: dict[str, list[str]] = {}
        for name in means:
            members.setdefault(info[name].layer_type, []).append(name)
        order = sorted(averaged, key=LAYER_TYPES.index)
        types = [TypeRule(t, averaged[t], choice[t], tuple(members[t])) for t in order]
        for name in means:
            p = info[name]
            r = choice[p.layer_type]
            dims = role_dims(r, len(p.shape)) if r else ()
            snr_keys = {dims_key(role_dims(ro, len(p.shape))): v for ro, v in averaged[p.layer_type].items()}
            rows.append(ParamRule(name, p.shape, p.layer_type, snr_keys, dims, saved_entries(p.shape, dims),
                                  p.stored_shape))
    else:
        for name, per_k in means.items():
            p = info[name]
            k = choose(per_k, cutoff)
            dims = key_dims(k) if k else ()
            rows.append(ParamRule(name, p.shape, p.layer_type, dict(per_k), dims, saved_entries(p.shape, dims),
                                  p.stored_shape))
    tracked = set(means)
    untracked = [p for p in record.params if p.name not in tracked]
    kept = [s for s in record.steps if s > skip_steps]
    return Derived("layer_type" if depth_average else "name", float(cutoff), int(skip_steps), kept, rows, types,
                   untracked, _record_provenance(record))


@dataclass(frozen=True)
class CutoffPoint:
    """One point of the saved-fraction-vs-cutoff curve."""

    cutoff: float
    saved_fraction: float
    compressed: int  # parameters (by name) that get some K
    tracked: int

    def to_dict(self) -> dict:
        return {"cutoff": self.cutoff, "saved_fraction": self.saved_fraction, "compressed": self.compressed,
                "tracked": self.tracked}


def sweep_cutoffs(record: SNRRecord, cutoffs: Sequence[float] = DEFAULT_CUTOFFS, *, depth_average: bool = False,
                  skip_steps: int = 0) -> list[CutoffPoint]:
    """Fraction of second moments saved as a function of the cutoff, from one SNR run (no retraining)."""
    out = []
    for c in sorted(float(x) for x in cutoffs):
        d = derive_rules(record, c, depth_average=depth_average, skip_steps=skip_steps)
        out.append(CutoffPoint(c, d.saved_fraction, sum(1 for r in d.rows if r.dims), len(d.rows)))
    return out


@dataclass(frozen=True)
class AppliedRule:
    """What one parameter of a (possibly different) model gets from a rules file."""

    assignment: Assignment
    snr: dict[str, float]  # the SNR the rule was chosen from (empty if the rule carries none)
    saved: int

    def to_dict(self) -> dict:
        return {**self.assignment.to_dict(), "snr": dict(self.snr), "saved": self.saved}


@dataclass
class Applied:
    """Rules applied to a model: per parameter, the rule it got and the dims; the memory saved."""

    rows: list[AppliedRule]
    by: str
    source: str | None

    @property
    def saved_fraction(self) -> float:
        total = sum(math.prod(r.assignment.shape) for r in self.rows)
        return sum(r.saved for r in self.rows) / total if total else 0.0

    def unmatched(self) -> list[str]:
        """Parameters with >= 2 dims that no rule matched (they stay uncompressed)."""
        return [r.assignment.name for r in self.rows if r.assignment.rule is None and len(r.assignment.shape) >= 2]


def apply_rules(rules: RulesLike, named_shapes: Iterable[tuple[str, Sequence[int]]], *,
                layouts: Mapping[str, Layout] | None = None) -> Applied:
    """Resolve ``rules`` against a model and report, per parameter, which rule it got.

    ``layouts`` (from :func:`slimbench.layouts.model_layouts`) read aliases by role and give fused weights
    their blocks; without them layouts are guessed from names. By-layer-type rules transfer to any model (a type the rules lack leaves its layers uncompressed).
    By-name rules must fit the model: a rule naming a parameter the model lacks, or recorded for another
    shape, raises a one-line :class:`FormatError` saying the rules are for a different model.
    """
    items = [(n, tuple(int(x) for x in s)) for n, s in named_shapes]
    ruleset = load_rules(rules) if isinstance(rules, (str, os.PathLike)) and rules != "paper" else rules
    entries: dict[str, dict] = {}
    by = "name"
    source = None
    if isinstance(ruleset, RuleSet):
        by, source = ruleset.by, ruleset.source
        for e in ruleset.entries:
            entries[e["match"] if by == "name" else f"type:{e['match']}"] = e
        if by == "name":
            _check_same_model(ruleset, dict(items))
    assignments = resolve(items, ruleset, layouts=layouts)
    rows = []
    for name, shape in items:
        a = assignments[name]
        e = entries.get(a.rule or "", {})
        snr = e.get("snr") if isinstance(e.get("snr"), dict) else {}
        rows.append(AppliedRule(a, {str(k): float(v) for k, v in snr.items()}, math.prod(shape) - math.prod(a.v_shape)))
    return Applied(rows, by, source)


def _check_same_model(ruleset: RuleSet, shapes: Mapping[str, tuple[int, ...]]) -> None:
    where = ruleset.source or "rules"
    for e in ruleset.entries:
        name = e["match"]
        if name.endswith("]") and "[" in name:
            name = name.rsplit("[", 1)[0]  # one block of a fused weight
            if name not in shapes:
                raise FormatError(f"{where}: rules for a different model: it names a block of {name!r}, which "
                                  f"this model lacks")
            continue
        if any(ch in name for ch in "*?["):
            continue  # a glob, not a recorded parameter
        if name not in shapes:
            raise FormatError(f"{where}: rules for a different model: it names {name!r}, which this model "
                              f"lacks ({len(shapes)} parameters, e.g. {', '.join(list(shapes)[:3])}); "
                              "derive with --depth-average for rules that transfer")
        recorded = e.get("shape")
        if isinstance(recorded, list) and tuple(int(x) for x in recorded) != shapes[name]:
            raise FormatError(f"{where}: rules for a different model: {name!r} was {list(recorded)} when the "
                              f"rules were derived, this model has {list(shapes[name])}")
