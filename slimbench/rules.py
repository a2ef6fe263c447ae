"""Compression rules: which dims K each parameter's second moment is averaged over.

A rule set maps parameters to dims. It comes in four forms, all resolved here by :func:`resolve`:

* ``None``: no compression (SlimAdam is then exactly AdamW).
* ``"paper"``: the paper's recommendations by layer type (:data:`slimbench.layers.PAPER_DIMS`).
* a dict ``{pattern: dims}``. A pattern is an exact parameter name, a glob (``"blocks.*.attn.q.weight"``)
  or a layer type prefixed with ``type:`` (``"type:query"``). Exact names win, then globs in dict order,
  then layer types. Globs and types only touch tensors with >= 2 dims (vector-like parameters stay
  uncompressed); an exact name may compress anything.
* a path to a rules JSON file (format ``slimbench.rules``), as written by ``python -m slimbench rules``.

Rules file, version 1::

    {"format": "slimbench.rules", "version": 1,
     "by": "name" | "layer_type",          # what "match" refers to
     "cutoff": 1.0,                         # SNR cutoff used to choose (informational)
     "rules": [{"match": "blocks.0.attn.q.weight" | "query", "dims": [1] | "fan_in",
                "snr": {"0": 3.1, "1": 12.0, "0,1": 0.8}, ...}],   # extra keys are kept, not used
     "provenance": {...}}

Fused QKV weights (nanoGPT ``c_attn``, ``qkv``, ``in_proj_weight``) stack Q, K and V along dim 0. The
paper wants fan_in for Q and K but fan_out for V, which one reduced tensor cannot hold, so the "paper" rules
leave them uncompressed and say so in the assignment's note (shown by ``slimbench audit``) rather than
squash them. A rule that names such a weight explicitly is honoured as written.
"""
from __future__ import annotations

import difflib
import fnmatch
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from slimbench.io import FormatError, read_versioned, write_json_atomic
from slimbench.layers import LAYER_TYPES, PAPER_DIMS, dims_label, layer_type, parse_dims

RULES_FORMAT = "slimbench.rules"
RULES_VERSION = 1

RulesLike = Union[None, str, os.PathLike, Mapping[str, Any], "RuleSet"]


@dataclass(frozen=True)
class Assignment:
    """What one parameter got: its dims K, the rule that gave them, and why (``note``)."""

    name: str
    shape: tuple[int, ...]
    layer_type: str
    dims: tuple[int, ...]
    rule: str | None = None  # the pattern / type / "paper:<type>" that matched; None = default (no compression)
    note: str = ""

    @property
    def label(self) -> str:
        return dims_label(self.dims, self.shape)

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "layer_type": self.layer_type,
                "dims": list(self.dims), "label": self.label, "rule": self.rule, "note": self.note}


@dataclass(frozen=True)
class RuleSet:
    """Rules loaded from a file: patterns to dims, plus whatever the file says about where they came from."""

    rules: dict[str, Any]  # pattern ("name", glob or "type:<layer type>") -> dims spec
    by: str = "name"
    cutoff: float | None = None
    provenance: dict = field(default_factory=dict)
    source: str | None = None  # file path
    entries: tuple[dict, ...] = ()  # the file's rule entries as written (SNR per candidate, ...)


def _fused_note(kind: str) -> str:
    return ("fused QKV weight left uncompressed (Q/K want fan_in, V wants fan_out; one reduced V cannot "
            "hold both)") if kind == "qkv_fused" else ""


def paper_assignment(name: str, shape: Sequence[int]) -> Assignment:
    """The paper's recommended dims for one parameter, by layer type."""
    kind = layer_type(name, shape)
    spec = PAPER_DIMS[kind]
    if spec is None or len(shape) < 2:
        note = _fused_note(kind) or ("no paper rule for conv weights" if kind == "conv" else "")
        return Assignment(name, tuple(shape), kind, (), f"paper:{kind}", note)
    return Assignment(name, tuple(shape), kind, parse_dims(spec, shape, kind), f"paper:{kind}")


def _closest(pattern: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(pattern.removeprefix("type:"), names, n=3, cutoff=0.3)
    return ", ".join(close) if close else ", ".join(names[:3])


def _pattern_matches(pattern: str, name: str, kind: str) -> bool:
    if pattern.startswith("type:"):
        return kind == pattern[5:]
    return fnmatch.fnmatchcase(name, pattern)


def resolve(named_shapes: Iterable[tuple[str, Sequence[int]]], rules: RulesLike, *,
            strict: bool | None = None) -> dict[str, Assignment]:
    """Assign dims K to every named parameter.

    Args:
        named_shapes: (name, shape) pairs, e.g. ``[(n, p.shape) for n, p in model.named_parameters()]``.
        rules: see the module docstring.
        strict: raise if a rule matches no parameter. Default: True for dicts and name-keyed files,
            False for layer-type files (a type rule may not apply to every model it is transferred to).

    Raises:
        ValueError: a rule that matches nothing (naming the closest parameter names), a dim the tensor
            lacks, an unknown layer type. :class:`slimbench.io.FormatError` for a bad rules file.
    """
    items = [(n, tuple(int(s) for s in shape)) for n, shape in named_shapes]
    if rules is None:
        return {n: Assignment(n, s, layer_type(n, s), ()) for n, s in items}
    if isinstance(rules, str) and rules == "paper":
        return {n: paper_assignment(n, s) for n, s in items}
    if isinstance(rules, (str, os.PathLike)):
        rules = load_rules(rules)
    if isinstance(rules, RuleSet):
        table, by, origin = rules.rules, rules.by, rules.source
    elif isinstance(rules, Mapping):
        table, by, origin = dict(rules), "name", None
    else:
        raise ValueError(f"rules must be None, 'paper', a dict, a RuleSet or a path; got {type(rules).__name__}")
    if strict is None:
        strict = by == "name"
    # Name-keyed files record each parameter's shape: a mismatch means rules for another model.
    expected_shapes = ({e["match"]: e["shape"] for e in rules.entries if "shape" in e}
                       if isinstance(rules, RuleSet) and by == "name" else {})
    where = f" in {origin}" if origin else ""

    for pattern in table:
        if not isinstance(pattern, str):
            raise ValueError(f"rule key {pattern!r}{where} is not a string")
        if pattern.startswith("type:") and pattern[5:] not in LAYER_TYPES:
            raise ValueError(f"rule {pattern!r}{where}: unknown layer type; known: {', '.join(LAYER_TYPES)}")

    names = [n for n, _ in items]
    exact = {p for p in table if p in set(names)}
    used: set[str] = set()
    out: dict[str, Assignment] = {}
    for name, shape in items:
        kind = layer_type(name, shape)
        if name in exact:
            pattern = name
        else:
            globs = [p for p in table if not p.startswith("type:") and p not in exact]
            types = [p for p in table if p.startswith("type:")]
            pattern = next((p for p in globs + types
                            if len(shape) >= 2 and _pattern_matches(p, name, kind)), None)
        if pattern is None:
            out[name] = Assignment(name, shape, kind, (), None, _fused_note(kind))
            continue
        used.add(pattern)
        want = expected_shapes.get(pattern)
        if want is not None and tuple(want) != shape:
            raise ValueError(f"rule {pattern!r}{where}: parameter has shape {list(shape)} in this model but "
                             f"{list(want)} in the rules file (rules derived for a different model?)")
        try:
            dims = parse_dims(table[pattern], shape, kind)
        except ValueError as e:
            raise ValueError(f"rule {pattern!r}{where} for parameter {name!r} (shape {list(shape)}): {e}") from None
        out[name] = Assignment(name, shape, kind, dims, pattern)
    if strict:
        # A rule counts as used if it matches some parameter, even where a more specific rule won.
        kinds = {n: layer_type(n, s) for n, s in items}
        used |= {p for p in table for n, s in items if p == n or (len(s) >= 2 and _pattern_matches(p, n, kinds[n]))}
    unused = [p for p in table if p not in used]
    if strict and unused:
        p = unused[0]
        raise ValueError(f"rule {p!r}{where} matches no parameter (with >= 2 dims for globs/types); "
                         f"closest parameter names: {_closest(p, names)}")
    return out


def load_rules(path: str | os.PathLike) -> RuleSet:
    """Read a rules file, checking its format, version and every entry; errors are one line."""
    obj = read_versioned(path, RULES_FORMAT, RULES_VERSION)
    by = obj.get("by", "name")
    if by not in ("name", "layer_type"):
        raise FormatError(f"{path}: 'by' must be 'name' or 'layer_type', got {by!r}")
    entries = obj.get("rules")
    if not isinstance(entries, list):
        raise FormatError(f"{path}: 'rules' must be a list of {{'match': ..., 'dims': ...}} entries")
    table: dict[str, Any] = {}
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or "match" not in e or "dims" not in e:
            raise FormatError(f"{path}: rule #{i} needs 'match' and 'dims', got {e!r}")
        key = e["match"] if by == "name" else f"type:{e['match']}"
        if by == "layer_type" and e["match"] not in LAYER_TYPES:
            raise FormatError(f"{path}: rule #{i}: unknown layer type {e['match']!r}")
        table[key] = e["dims"]
    return RuleSet(table, by, obj.get("cutoff"), obj.get("provenance", {}), str(path), tuple(entries))


def save_rules(path: str | os.PathLike, entries: Sequence[Mapping[str, Any]], *, by: str = "name",
               cutoff: float | None = None, provenance: Mapping[str, Any] | None = None) -> Path:
    """Write a rules file (atomically). Each entry needs 'match' and 'dims'; other keys are kept."""
    if by not in ("name", "layer_type"):
        raise ValueError(f"by must be 'name' or 'layer_type', got {by!r}")
    rows = []
    for e in entries:
        if "match" not in e or "dims" not in e:
            raise ValueError(f"rule entry needs 'match' and 'dims': {dict(e)!r}")
        row = dict(e)
        if not isinstance(row["dims"], str):
            row["dims"] = [int(d) for d in row["dims"]]
        rows.append(row)
    obj = {"format": RULES_FORMAT, "version": RULES_VERSION, "by": by, "cutoff": cutoff,
           "rules": rows, "provenance": dict(provenance or {})}
    return write_json_atomic(path, obj)


def fingerprint(rules: RulesLike) -> str:
    """A short stable id of a rule set, for file names and benchmark extra_info."""
    import hashlib
    import json

    if rules is None:
        return "none"
    if isinstance(rules, str) and rules == "paper":
        return "paper"
    if isinstance(rules, (str, os.PathLike)):
        rules = load_rules(rules)
    table = rules.rules if isinstance(rules, RuleSet) else dict(rules)
    blob = json.dumps({str(k): v if v is None or isinstance(v, str) else list(v) for k, v in table.items()},
                      sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:10]
