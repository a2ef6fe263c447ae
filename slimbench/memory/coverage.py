"""Coverage: what SlimAdam's paper rules do on each architecture, measured on the meta device.

For each model (a ``--model`` string: a preset, ``hf:<model_type>`` built offline from its config, or a
factory) the audit runs SlimAdam's real ``step()`` on meta tensors and reads the state it created
(:func:`slimbench.memory.audit.audit`). A row says how much of Adam's second moment is saved, how many
weights were compressed (whole or per block), kept full as 1-D tensors by design, or fell back to full
Adam, and, for every fallback, the reason SlimAdam gave. Layer indices are folded (``h.*.attn``) so a
reason is listed once per kind of weight.

Every weight with >= 2 dims gets a rule or a stated reason; nothing is silent.
"""
from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from math import prod

from slimbench.memory.audit import audit
from slimbench.modelspec import resolve_model

# The architectures of issue 11, all built offline from transformers' default configs (full size).
DEFAULT_MODELS = ("hf:gpt2", "hf:llama", "hf:mistral", "hf:qwen2", "hf:gemma", "hf:phi3", "hf:falcon",
                  "hf:gpt_neox", "hf:bert", "hf:roberta", "hf:t5", "hf:vit", "gpt2-small-paper", "gpt2-small",
                  "llama-3-8b")
DECODER_LMS = ("hf:gpt2", "hf:llama", "hf:mistral", "hf:qwen2", "hf:gemma", "hf:phi3", "hf:falcon", "hf:gpt_neox",
               "gpt2-small-paper", "gpt2-small", "llama-3-8b")


@dataclass
class CoverageRow:
    """One architecture: measured savings, counts by outcome, and every fallback with its reason."""

    model: str
    model_class: str
    params: int
    second_moments_held: int
    saved_fraction: float  # 1 - held / parameter elements, from the state SlimAdam created
    compressed: int  # weights with >= 2 dims whose V is reduced (whole tensor)
    per_block: int  # fused weights compressed block by block
    vectors: int  # 1-D tensors, full by design
    fell_back: int  # weights with >= 2 dims kept full
    fallbacks: list[dict] = field(default_factory=list)  # {"pattern", "count", "elements", "reason"}
    layouts: dict[str, int] = field(default_factory=dict)  # layout source -> weights
    seconds: float = 0.0
    error: str = ""

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _fold(name: str) -> str:
    """'model.layers.11.mlp.up_proj.weight' -> 'model.layers.*.mlp.up_proj.weight'."""
    return re.sub(r"\.\d+\.", ".*.", name)


def coverage_row(model: str) -> CoverageRow:
    """Audit SlimAdam (paper rules) on one model; a model that cannot be built is a row with its error."""
    t0 = time.perf_counter()
    try:
        spec = resolve_model(model)
        m = spec.build("meta")
        res = audit(m, ["slimadam"])
    except (ValueError, ImportError) as e:
        return CoverageRow(model, "", 0, 0, 0.0, 0, 0, 0, 0, error=str(e).splitlines()[0])
    row = res.row("slimadam")
    assert row.ledger is not None, row.reason
    folded: dict[tuple[str, str], list[int]] = {}
    layouts: dict[str, int] = {}
    counts = {"compressed": 0, "per_block": 0, "vectors": 0, "fell_back": 0}
    for r in res.intent:
        if len(r.shape) >= 2:
            layouts[r.layout] = layouts.get(r.layout, 0) + 1
        if r.status == "compressed per block":
            counts["per_block"] += 1
        elif r.status == "compressed":
            counts["compressed"] += 1
        elif r.status == "full (1-D)":
            counts["vectors"] += 1
        else:
            counts["fell_back"] += 1
            reason = r.note or (f"mismatch: held {r.actual_v_shape}, meant {r.intended_v_shape}"
                                if r.status == "mismatch" else r.status)
            slot = folded.setdefault((_fold(r.name), reason), [0, 0])
            slot[0] += 1
            slot[1] += prod(r.shape)
    fallbacks = [{"pattern": p, "count": c, "elements": n, "reason": why} for (p, why), (c, n) in folded.items()]
    lg = row.ledger
    return CoverageRow(model, type(m).__name__, res.param_numel, lg.second_moments, lg.second_moment_saved_fraction,
                       fallbacks=fallbacks, layouts=layouts, seconds=time.perf_counter() - t0, **counts)


def coverage(models: Sequence[str] = DEFAULT_MODELS) -> list[CoverageRow]:
    """One :class:`CoverageRow` per model, in order."""
    return [coverage_row(m) for m in models]
