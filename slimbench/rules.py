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

* a list of any of these, layered: later wins (``["paper", {"lm_head.weight": "none"}]``); block by block
  for fused weights.
* a rules file of the paper's reference code, ``{param_name: [dims] | null}`` (dims as stored).

Aliases (``fan_out``, ``fan_in``, ``both``, ``embed``, ``token``) are roles, read through each weight's
:class:`slimbench.layouts.Layout` (HF ``Conv1D`` stores (in, out), so its fan_out is dim 1); a list of ints
is stored dims, as written. Names match with or without the ``_orig_mod.`` (torch.compile) and ``module.``
(DDP) prefixes.

Fused weights (GPT-2 ``c_attn``, ``qkv``, ``in_proj_weight``, ``query_key_value``, ``qkv_proj``,
``gate_up_proj``) are compressed per block: each block (Q, K, V, gate, up) gets its own K by its role
(``type:query`` rules apply to Q blocks), exactly as if the blocks were separate weights. A block can be
named ``"<param>[query]"``, or a weight's blocks given at once as ``{"<param>": {"query": "fan_in",
"value": "fan_out"}}``. A plain rule naming the fused weight itself compresses the whole tensor as written.
"""
from __future__ import annotations

import difflib
import fnmatch
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from math import prod
from pathlib import Path
from typing import Any, Union

from slimbench.io import FormatError, read_json, read_versioned, write_json_atomic
from slimbench.layers import LAYER_TYPES, PAPER_DIMS, dims_label, layer_type, parse_dims, strip_wrappers
from slimbench.layouts import Block, Layout, default_layout, name_layouts

RULES_FORMAT = "slimbench.rules"
RULES_VERSION = 1
MAX_RULES = 100_000  # a rules file names each parameter at most once; 8B-parameter models have < 1000

class _DefaultRules(str):
    """The default rule set, equal to "paper" but told apart from an explicit "paper" (by identity), so
    SlimAdam given bare parameters can fall back with a warning where an explicit "paper" is an error."""


DEFAULT_RULES = _DefaultRules("paper")  # SlimAdam's, the CLI's and the runner's default rule set (one place)

RulesLike = Union[None, str, os.PathLike, Mapping[str, Any], "RuleSet", Sequence[Any]]


@dataclass(frozen=True)
class BlockAssignment:
    """What one block of a fused weight got: its dims K in the block's view, and the rule."""

    block: Block
    dims: tuple[int, ...]
    rule: str | None = None

    @property
    def label(self) -> str:
        return role_label(self.dims, self.block.shape, self.block.fan_out, self.block.fan_in)

    @property
    def v_shape(self) -> tuple[int, ...]:
        return tuple(1 if i in self.dims else s for i, s in enumerate(self.block.shape))

    def to_dict(self) -> dict:
        return {"role": self.block.role, "shape": list(self.block.shape), "dims": list(self.dims),
                "label": self.label, "v_shape": list(self.v_shape), "rule": self.rule}


@dataclass(frozen=True)
class Assignment:
    """What one parameter got: its dims K (or one K per block of a fused weight), the rule, and why."""

    name: str
    shape: tuple[int, ...]
    layer_type: str
    dims: tuple[int, ...]
    rule: str | None = None  # the pattern / type / "paper:<type>" that matched; None = no rule (no compression)
    note: str = ""
    layout: Layout | None = None
    blocks: tuple[BlockAssignment, ...] = ()  # fused weight: one V per block (then ``dims`` is ())

    @property
    def label(self) -> str:
        if self.blocks:
            return "blocks(" + ", ".join(f"{b.block.role}={b.label}" for b in self.blocks) + ")"
        lay = self.layout or default_layout(self.shape)
        if lay.embed is not None and self.dims and self.dims == tuple(lay.embed):
            return "embed"
        return role_label(self.dims, self.shape, lay.fan_out, lay.fan_in)

    @property
    def v_shape(self) -> tuple[int, ...]:
        """The shape of V this assignment means: reduced, or 1-D (the blocks' V's, flattened) for blocks."""
        if self.blocks:
            return (sum(prod(b.v_shape) for b in self.blocks),)
        return tuple(1 if i in self.dims else s for i, s in enumerate(self.shape))

    @property
    def compressed(self) -> bool:
        return bool(self.dims) or any(b.dims for b in self.blocks)

    def to_dict(self) -> dict:
        d = {"name": self.name, "shape": list(self.shape), "layer_type": self.layer_type,
             "dims": list(self.dims), "label": self.label, "rule": self.rule, "note": self.note,
             "v_shape": list(self.v_shape)}
        if self.layout is not None:
            d["layout"] = self.layout.source
        if self.blocks:
            d["blocks"] = [b.to_dict() for b in self.blocks]
        return d


def role_label(dims: Sequence[int], shape: Sequence[int], fan_out: Sequence[int], fan_in: Sequence[int]) -> str:
    """Human name of dims by role: 'none', 'fan_out', 'fan_in', 'both', or the list of stored dims."""
    dims = tuple(dims)
    if not dims:
        return "none"
    if len(shape) >= 2 and dims == tuple(range(len(shape))):
        return "both"
    if len(shape) >= 2 and dims == tuple(sorted(fan_out)):
        return "fan_out"
    if len(shape) >= 2 and dims == tuple(sorted(fan_in)):
        return "fan_in"
    return dims_label(dims, shape)


@dataclass(frozen=True)
class RuleSet:
    """Rules loaded from a file: patterns to dims, plus whatever the file says about where they came from."""

    rules: dict[str, Any]  # pattern ("name", glob or "type:<layer type>") -> dims spec
    by: str = "name"
    cutoff: float | None = None
    provenance: dict = field(default_factory=dict)
    source: str | None = None  # file path
    entries: tuple[dict, ...] = ()  # the file's rule entries as written (SNR per candidate, ...)


def _fallback_note(kind: str, lay: Layout | None, ndim: int) -> str:
    """Why a weight with >= 2 dims gets no compression from the paper rules (shown by audit)."""
    if ndim < 2:
        return ""
    if kind in ("qkv_fused", "mlp_gate_up"):
        why = lay.note if lay is not None and lay.note else "its blocks could not be read"
        return f"fused weight left uncompressed: {why}"
    if kind == "conv":
        return "no paper rule for conv weights (derive one with `slimbench snr`)"
    if kind == "patch_embedding":
        return "no paper rule for a patch embedding (derive one with `slimbench snr`)"
    return f"no paper rule for layer type {kind!r} (name it in rules to compress it)"


def _parse(spec: Any, shape: Sequence[int], kind: str, lay: Layout | None) -> tuple[int, ...]:
    lay = lay or default_layout(shape)
    return parse_dims(spec, shape, kind, fan_out=lay.fan_out, fan_in=lay.fan_in, embed=lay.embed)


def _paper_blocks(lay: Layout) -> tuple[BlockAssignment, ...]:
    out = []
    for b in lay.blocks:
        spec = PAPER_DIMS.get(b.role)
        dims = parse_dims(spec, b.shape, b.role, fan_out=b.fan_out, fan_in=b.fan_in) if spec else ()
        out.append(BlockAssignment(b, dims, f"paper:{b.role}"))
    return tuple(out)


def paper_assignment(name: str, shape: Sequence[int], layout: Layout | None = None) -> Assignment:
    """The paper's recommended dims for one parameter, by layer type (per block for a fused weight)."""
    shape = tuple(shape)
    kind = layer_type(name, shape)
    if layout is not None and layout.blocks and len(shape) >= 2:
        return _finish(Assignment(name, shape, kind, (), f"paper:{kind}", "", layout, _paper_blocks(layout)))
    spec = PAPER_DIMS.get(kind)
    if spec is None or len(shape) < 2:
        return Assignment(name, shape, kind, (), f"paper:{kind}", _fallback_note(kind, layout, len(shape)), layout)
    return Assignment(name, shape, kind, _parse(spec, shape, kind, layout), f"paper:{kind}", "", layout)


def _finish(a: Assignment) -> Assignment:
    """A blocked assignment whose blocks all got K = () is plain Adam: drop the blocks (V keeps its shape)."""
    if a.blocks and not any(b.dims for b in a.blocks):
        return replace(a, blocks=(), note=a.note or "every block uncompressed")
    return a


def _closest(pattern: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(pattern.removeprefix("type:"), names, n=3, cutoff=0.3)
    return ", ".join(close) if close else ", ".join(names[:3])


def _pattern_matches(pattern: str, name: str, kind: str) -> bool:
    if pattern.startswith("type:"):
        return kind == pattern[5:]
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(strip_wrappers(name), pattern)


def _split_block_key(pattern: str) -> tuple[str, str | None]:
    """'h.0.attn.c_attn.weight[query]' -> ('h.0.attn.c_attn.weight', 'query'); other keys -> (key, None)."""
    if pattern.endswith("]") and "[" in pattern:
        base, _, role = pattern[:-1].rpartition("[")
        if role.isidentifier():
            return base, role
    return pattern, None


def _as_table(rules: RulesLike) -> tuple[dict[str, Any], str, str | None, RuleSet | None]:
    if isinstance(rules, (str, os.PathLike)):
        rules = load_rules(rules)
    if isinstance(rules, RuleSet):
        return rules.rules, rules.by, rules.source, rules
    if isinstance(rules, Mapping):
        return dict(rules), "name", None, None
    raise ValueError(f"rules must be None, 'paper', a dict, a RuleSet, a path or a list of those; "
                     f"got {type(rules).__name__}")


def _layers(rules: RulesLike) -> list[Any]:
    if isinstance(rules, (list, tuple)):
        if not rules:
            raise ValueError("rules: an empty list; use None for no compression")
        return list(rules)
    return [rules]


def resolve(named_shapes: Iterable[tuple[str, Sequence[int]]], rules: RulesLike, *,
            strict: bool | None = None, layouts: Mapping[str, Layout] | None = None) -> dict[str, Assignment]:
    """Assign dims K to every named parameter (one K per block for fused weights).

    Args:
        named_shapes: (name, shape) pairs, e.g. ``[(n, p.shape) for n, p in model.named_parameters()]``.
        rules: see the module docstring; a list of rule sets layers them, later wins
            (``["paper", {"lm_head.weight": "none"}]``).
        strict: raise if a rule matches no parameter. Default: True for dicts and name-keyed files,
            False for layer-type files (a type rule may not apply to every model it is transferred to).
        layouts: each parameter's :class:`slimbench.layouts.Layout` (from :func:`slimbench.layouts.
            model_layouts`); aliases such as "fan_in" are read through it. Default: names and shapes only.

    Raises:
        ValueError: a rule that matches nothing (naming the closest parameter names), a dim the tensor
            lacks, an unknown layer type. :class:`slimbench.io.FormatError` for a bad rules file.
    """
    items = [(n, tuple(int(s) for s in shape)) for n, shape in named_shapes]
    lays = dict(layouts) if layouts is not None else name_layouts(items)
    out: dict[str, Assignment] | None = None
    for layer in _layers(rules):
        got = _resolve_one(items, layer, strict, lays)
        out = got if out is None else {n: _merge(out[n], got[n]) for n in out}
    assert out is not None
    return out


def _merge(old: Assignment, new: Assignment) -> Assignment:
    """Layer ``new`` over ``old``: a rule in the later layer wins, block by block for fused weights."""
    if new.rule is None and not any(b.rule for b in new.blocks):
        return old
    if new.blocks and old.blocks and len(new.blocks) == len(old.blocks):
        blocks = tuple(nb if nb.rule is not None else ob for ob, nb in zip(old.blocks, new.blocks))
        return _finish(replace(new, blocks=blocks))
    return new


def _resolve_one(items: list[tuple[str, tuple[int, ...]]], rules: RulesLike, strict: bool | None,
                 lays: Mapping[str, Layout]) -> dict[str, Assignment]:
    if rules is None or (isinstance(rules, str) and rules.strip().lower() == "none"):
        return {n: Assignment(n, s, layer_type(n, s), (), None, "", lays.get(n)) for n, s in items}
    if isinstance(rules, str) and rules == "paper":
        return {n: paper_assignment(n, s, lays.get(n)) for n, s in items}
    table, by, origin, ruleset = _as_table(rules)
    if strict is None:
        strict = by == "name"
    # Name-keyed files record each parameter's shape: a mismatch means rules for another model.
    expected_shapes = ({e["match"]: e["shape"] for e in ruleset.entries if "shape" in e}
                       if ruleset is not None and by == "name" else {})
    where = f" in {origin}" if origin else ""

    for pattern in table:
        if not isinstance(pattern, str):
            raise ValueError(f"rule key {pattern!r}{where} is not a string")
        if pattern.startswith("type:") and pattern[5:] not in LAYER_TYPES:
            raise ValueError(f"rule {pattern!r}{where}: unknown layer type; known: {', '.join(LAYER_TYPES)}")

    names = [n for n, _ in items]
    name_set = set(names) | {strip_wrappers(n) for n in names}
    exact = {p for p in table if p in name_set}
    globs = [p for p in table if not p.startswith("type:") and p not in exact and _split_block_key(p)[1] is None]
    types = [p for p in table if p.startswith("type:")]
    block_keys = {_split_block_key(p) for p in table if _split_block_key(p)[1] is not None}
    used: set[str] = set()
    out: dict[str, Assignment] = {}
    for name, shape in items:
        kind = layer_type(name, shape)
        lay = lays.get(name)
        bare = strip_wrappers(name)
        pattern = name if name in exact else (bare if bare in exact else None)
        if pattern is None:
            pattern = next((p for p in globs + types if len(shape) >= 2 and _pattern_matches(p, name, kind)), None)
        value = table.get(pattern) if pattern is not None else None
        blocked = lay is not None and lay.blocks and len(shape) >= 2
        if blocked and (pattern is None or isinstance(value, Mapping) or pattern not in exact):
            blocks = _block_rules(name, lay, table, pattern if isinstance(value, Mapping) else None,
                                  block_keys, types, used, where)
            if any(b.rule for b in blocks):
                if pattern is not None and isinstance(value, Mapping):
                    used.add(pattern)
                out[name] = _finish(Assignment(name, shape, kind, (), "blocks", "", lay, blocks))
                continue
        if pattern is None:
            out[name] = Assignment(name, shape, kind, (), None, "", lay)
            continue
        used.add(pattern)
        want = expected_shapes.get(pattern)
        if want is not None and tuple(want) != shape:
            raise ValueError(f"rule {pattern!r}{where}: parameter has shape {list(shape)} in this model but "
                             f"{list(want)} in the rules file (rules derived for a different model?)")
        if isinstance(value, Mapping):
            raise ValueError(f"rule {pattern!r}{where}: a dict of block dims ({', '.join(map(str, value))}) for "
                             f"{name!r}, which is not a fused weight with blocks")
        try:
            dims = _parse(value, shape, kind, lay)
        except ValueError as e:
            raise ValueError(f"rule {pattern!r}{where} for parameter {name!r} (shape {list(shape)}): {e}") from None
        note = "whole fused weight compressed as written (not per block)" if blocked else ""
        out[name] = Assignment(name, shape, kind, dims, pattern, note, lay)
    if strict:
        # A rule counts as used if it matches some parameter, even where a more specific rule won.
        kinds = {n: layer_type(n, s) for n, s in items}
        used |= {p for p in table for n, s in items
                 if p == n or p == strip_wrappers(n) or (len(s) >= 2 and _pattern_matches(p, n, kinds[n]))}
    unused = [p for p in table if p not in used]
    if strict and unused:
        p = unused[0]
        raise ValueError(f"rule {p!r}{where} matches no parameter (with >= 2 dims for globs/types); "
                         f"closest parameter names: {_closest(p, names)}")
    return out


def _block_rules(name: str, lay: Layout, table: Mapping[str, Any], dict_pattern: str | None,
                 block_keys: set[tuple[str, str]], types: list[str], used: set[str], where: str
                 ) -> tuple[BlockAssignment, ...]:
    """Dims per block: ``name[role]`` keys, then a ``{role: dims}`` value for the weight, then ``type:<role>``."""
    bare = strip_wrappers(name)
    out = []
    for b in lay.blocks:
        key = next((f"{base}[{role}]" for base, role in block_keys
                    if role == b.role and (base in (name, bare) or fnmatch.fnmatchcase(name, base)
                                           or fnmatch.fnmatchcase(bare, base))), None)
        if key is not None:
            spec, rule = table[key], key
        elif dict_pattern is not None and b.role in table[dict_pattern]:
            spec, rule = table[dict_pattern][b.role], f"{dict_pattern}[{b.role}]"
        elif f"type:{b.role}" in types:
            spec, rule = table[f"type:{b.role}"], f"type:{b.role}"
        else:
            out.append(BlockAssignment(b, (), None))
            continue
        used.add(key if key is not None else (dict_pattern if rule != f"type:{b.role}" else rule))
        try:
            dims = parse_dims(spec, b.shape, b.role, fan_out=b.fan_out, fan_in=b.fan_in)
        except ValueError as e:
            raise ValueError(f"rule {rule!r}{where} for block {b.role!r} of {name!r} (block shape "
                             f"{list(b.shape)}): {e}") from None
        out.append(BlockAssignment(b, dims, rule))
    return tuple(out)


def _check_dims_value(value: Any, where: str) -> None:
    """Rules files are strict: dims are an alias string, null, or a list of ints (no bools, no floats)."""
    if value is None or isinstance(value, str):
        return
    if isinstance(value, Mapping):
        for v in value.values():
            _check_dims_value(v, where)
        return
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in value):
        raise FormatError(f"{where}: dims must be an alias string, null or a list of ints, got {value!r}")


def load_rules(path: str | os.PathLike) -> RuleSet:
    """Read a rules file, checking its format, version and every entry; errors are one line.

    Besides slimbench's own format this reads the paper's reference code's rules files, a JSON object
    ``{param_name: [dims] | null}`` (dims as stored; null = no compression), as name-keyed rules.
    """
    obj = read_json(path)
    if isinstance(obj, dict) and "format" not in obj and obj and all(
            isinstance(k, str) and (v is None or isinstance(v, list)) for k, v in obj.items()):
        if len(obj) > MAX_RULES:
            raise FormatError(f"{path}: {len(obj)} rules; at most {MAX_RULES} are read")
        for k, v in obj.items():
            _check_dims_value(v, f"{path}: rule {k!r}")
        return RuleSet({k: (v if v is not None else "none") for k, v in obj.items()}, "name", None,
                       {"format": "paper reference code ({name: dims})"}, str(path),
                       tuple({"match": k, "dims": v} for k, v in obj.items()))
    obj = read_versioned(path, RULES_FORMAT, RULES_VERSION)
    by = obj.get("by", "name")
    if by not in ("name", "layer_type"):
        raise FormatError(f"{path}: 'by' must be 'name' or 'layer_type', got {by!r}")
    entries = obj.get("rules")
    if not isinstance(entries, list):
        raise FormatError(f"{path}: 'rules' must be a list of {{'match': ..., 'dims': ...}} entries")
    if len(entries) > MAX_RULES:
        raise FormatError(f"{path}: {len(entries)} rules; at most {MAX_RULES} are read")
    table: dict[str, Any] = {}
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or "match" not in e or "dims" not in e:
            raise FormatError(f"{path}: rule #{i} needs 'match' and 'dims', got {e!r}")
        if not isinstance(e["match"], str):
            raise FormatError(f"{path}: rule #{i}: 'match' must be a string, got {e['match']!r}")
        _check_dims_value(e["dims"], f"{path}: rule #{i} ({e['match']!r})")
        key = e["match"] if by == "name" else f"type:{e['match']}"
        if by == "layer_type" and e["match"] not in LAYER_TYPES:
            raise FormatError(f"{path}: rule #{i}: unknown layer type {e['match']!r}")
        if key in table:
            raise FormatError(f"{path}: rule #{i}: {e['match']!r} appears twice")
        table[key] = e["dims"]
    cutoff = obj.get("cutoff")
    if cutoff is not None and (isinstance(cutoff, bool) or not isinstance(cutoff, (int, float))):
        raise FormatError(f"{path}: 'cutoff' must be a number or null, got {cutoff!r}")
    return RuleSet(table, by, cutoff, obj.get("provenance", {}), str(path), tuple(entries))


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

    if rules is None or (isinstance(rules, str) and rules.strip().lower() == "none"):
        return "none"
    if isinstance(rules, str) and rules == "paper":
        return "paper"
    if isinstance(rules, (list, tuple)):
        parts = [fingerprint(r) for r in rules]
        return parts[0] if len(parts) == 1 else hashlib.sha1("+".join(parts).encode()).hexdigest()[:10]
    if isinstance(rules, (str, os.PathLike)):
        rules = load_rules(rules)
    table = rules.rules if isinstance(rules, RuleSet) else dict(rules)
    blob = json.dumps({str(k): v if v is None or isinstance(v, (str, dict)) else list(v) for k, v in table.items()},
                      sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:10]
