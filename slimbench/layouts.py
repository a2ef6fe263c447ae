"""Which stored dims of each weight hold its mathematical roles, and the blocks of fused weights.

fan_out (the output features), fan_in (the input features) and the embedding dim are roles, not tensor
dims. Which dim holds them is a fact about the module that owns the weight, decided here, once, and used
by SlimAdam, the SNR tracker, rule derivation and the audit alike:

    nn.Linear (out, in)                      fan_out = (0,), fan_in = (1,)
    transformers Conv1D (in, out) (GPT-2)     fan_out = (1,), fan_in = (0,)
    nn.ConvNd (out, in/groups, *k)            fan_out = (0,), fan_in = (1, 2, ...)
    nn.ConvTransposeNd (in, out/groups, *k)   fan_out = (1,), fan_in = (0, 2, ...)
    nn.Embedding (tokens, dim)                token dim (0,), embedding dim (1,) (torch's fan_out/fan_in
                                              convention for an embedding is kept: use "embed"/"token")
    nn.MultiheadAttention.in_proj_weight      (3*d, d), blocks Q | K | V along dim 0

A **fused** weight holds several projections at once: Q|K|V (GPT-2 ``c_attn``, ViT ``qkv``, Phi-3
``qkv_proj``, GPT-NeoX/Falcon/Bloom ``query_key_value``, heads interleaved) or gate|up (Phi-3
``gate_up_proj``). Its :class:`Block` list says, for each block, its role (layer type) and how to view it
out of the tensor (a reshape, then a range along one axis), with the block's own fan_out / fan_in dims in
that view. SlimAdam keeps one V per block, so a fused weight behaves exactly like the same blocks stored
as separate weights.

Given only names (``SlimAdam(model.named_parameters())``), a 2-D weight is assumed (out, in); names that
Hugging Face stores as ``Conv1D`` (in, out) are flagged ``ambiguous`` so the caller can warn once and name
the fix: pass the model itself.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from math import prod
from typing import Any

from torch import Tensor, nn

from slimbench.layers import layer_type, module_name

# Names of weights that Hugging Face GPT-2 (and its kin) store as Conv1D (in, out): from names alone
# their layout cannot be known.
CONV1D_NAMES = ("c_attn", "c_proj", "c_fc", "q_attn")


@dataclass(frozen=True)
class Block:
    """One projection inside a fused weight: ``t.view(view).narrow(axis, start, length)``.

    ``fan_out`` / ``fan_in`` are dims of that block view.
    """

    role: str  # a layer type: query, key, value, mlp_gate, mlp_up
    view: tuple[int, ...]
    axis: int
    start: int
    length: int
    fan_out: tuple[int, ...]
    fan_in: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.length if i == self.axis else s for i, s in enumerate(self.view))

    @property
    def numel(self) -> int:
        return prod(self.shape)

    def take(self, t: Tensor) -> Tensor:
        """The block of ``t`` (a parameter, its gradient or its first moment) as a view: writes go through."""
        return t.view(self.view).narrow(self.axis, self.start, self.length)

    def to_dict(self) -> dict:
        return {"role": self.role, "view": list(self.view), "axis": self.axis, "start": self.start,
                "length": self.length, "fan_out": list(self.fan_out), "fan_in": list(self.fan_in)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Block:
        return cls(str(d["role"]), tuple(int(x) for x in d["view"]), int(d["axis"]), int(d["start"]),
                   int(d["length"]), tuple(int(x) for x in d["fan_out"]), tuple(int(x) for x in d["fan_in"]))


@dataclass(frozen=True)
class Layout:
    """Where the roles of one parameter live in its stored dims, and how it came to be known."""

    fan_out: tuple[int, ...]
    fan_in: tuple[int, ...]
    source: str  # "nn.Linear", "transformers Conv1D", ..., or "name (assumed (out, in))"
    embed: tuple[int, ...] | None = None  # the embedding dim, where the weight is an embedding table
    blocks: tuple[Block, ...] = ()
    ambiguous: str = ""  # why the layout is a guess (shown to the user), "" when known
    note: str = ""  # e.g. why a fused weight has no blocks

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"fan_out": list(self.fan_out), "fan_in": list(self.fan_in), "source": self.source}
        if self.embed is not None:
            d["embed"] = list(self.embed)
        if self.blocks:
            d["blocks"] = [b.to_dict() for b in self.blocks]
        for k in ("ambiguous", "note"):
            if getattr(self, k):
                d[k] = getattr(self, k)
        return d


def default_layout(shape: Sequence[int], source: str = "name (assumed (out, in))") -> Layout:
    """The (out, in, ...) convention: fan_out = dim 0, fan_in = every other dim."""
    n = len(shape)
    return Layout((0,) if n else (), tuple(range(1, n)), source)


# -- fused weights ---------------------------------------------------------------------------------
def _split_blocks(shape: tuple[int, ...], axis: int, parts: Sequence[tuple[str, int]]) -> tuple[Block, ...]:
    """Contiguous blocks along stored ``axis`` of a 2-D weight (out axis), each with its role and size."""
    if sum(n for _, n in parts) != shape[axis]:
        return ()
    other = 1 - axis
    out, start = [], 0
    for role, n in parts:
        out.append(Block(role, shape, axis, start, n, (axis,), (other,)))
        start += n
    return tuple(out)


def _interleaved_blocks(shape: tuple[int, ...], groups: int, parts: Sequence[tuple[str, int]],
                        head_dim: int) -> tuple[Block, ...]:
    """Blocks of a (groups * sum(parts) * head_dim, in) weight whose rows repeat [part0 | part1 | ...] per group
    (GPT-NeoX / Bloom: per head [q | k | v]; Falcon's new architecture: per KV group [q * g | k | v])."""
    per = sum(n for _, n in parts)
    if len(shape) != 2 or groups * per * head_dim != shape[0]:
        return ()
    view = (groups, per, head_dim, shape[1])
    out, start = [], 0
    for role, n in parts:
        out.append(Block(role, view, 1, start, n, (0, 1, 2), (3,)))
        start += n
    return tuple(out)


def _heads(config: Any) -> tuple[int | None, int | None, int | None]:
    """(heads, kv heads, head dim) from a transformers config, where it says."""
    if config is None:
        return None, None, None
    h = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
    kv = (getattr(config, "num_key_value_heads", None) or getattr(config, "num_kv_heads", None)
          or getattr(config, "n_head_kv", None) or h)
    d = getattr(config, "head_dim", None)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    if d is None and h and hidden:
        d = hidden // h
    return h, kv, d


def fused_blocks(name: str, shape: Sequence[int], out_axis: int, config: Any = None) -> tuple[tuple[Block, ...], str]:
    """Blocks of a fused weight, or ``((), reason)`` when its layout cannot be read.

    ``out_axis`` is the stored dim of the output features (0 for nn.Linear, 1 for Conv1D). ``config`` is
    the model's (transformers) config, needed for grouped-query and interleaved layouts.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2:
        return (), f"fused weight of shape {list(shape)}: blocks are read for 2-D weights only"
    module, _ = module_name(name)
    out = shape[out_axis]
    h, kv, d = _heads(config)
    model_type = getattr(config, "model_type", None)
    if module == "gate_up_proj" or module == "w13":
        if out % 2:
            return (), f"gate|up weight with an odd output size {out}"
        return _split_blocks(shape, out_axis, [("mlp_gate", out // 2), ("mlp_up", out // 2)]), ""
    if module == "query_key_value":
        if not (h and d):
            return (), "query_key_value layout needs the model's config (heads, head dim): pass the model"
        if model_type == "falcon" and getattr(config, "new_decoder_architecture", False):
            g = h // kv
            return _interleaved_blocks(shape, kv, [("query", g), ("key", 1), ("value", 1)], d) or (
                (), "query_key_value does not match Falcon's grouped layout"), ""
        if model_type == "falcon" and getattr(config, "multi_query", False):
            return _split_blocks(shape, 0, [("query", h * d), ("key", d), ("value", d)]) or (
                (), "query_key_value does not match Falcon's multi-query layout"), ""
        # GPT-NeoX, Bloom, Falcon (not multi-query): per head [q | k | v]
        blocks = _interleaved_blocks(shape, h, [("query", 1), ("key", 1), ("value", 1)], d)
        return (blocks, "") if blocks else ((), "query_key_value does not match a per-head [q|k|v] layout")
    # Q | K | V stacked (c_attn, qkv, in_proj, qkv_proj, to_qkv, wqkv): grouped-query sizes from the config.
    if h and d and kv and kv != h and (h + 2 * kv) * d == out:
        parts = [("query", h * d), ("key", kv * d), ("value", kv * d)]
    elif out % 3 == 0:
        parts = [("query", out // 3), ("key", out // 3), ("value", out // 3)]
    else:
        return (), f"fused QKV weight with output size {out}: not Q|K|V of equal or grouped-query sizes"
    return _split_blocks(shape, out_axis, parts), ""


# -- layouts of a model ----------------------------------------------------------------------------
def _is_conv1d(module: nn.Module) -> bool:
    """transformers' Conv1D (GPT-2, GPT-J's kin): weight (in, out). Checked by duck type, no import."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def module_layout(module: nn.Module, leaf: str, shape: Sequence[int]) -> Layout | None:
    """The layout of ``module``'s parameter ``leaf`` (e.g. "weight"), or None if the module type is unknown."""
    n = len(shape)
    if n < 2:
        return Layout((0,) if n else (), (), type(module).__name__)
    if _is_conv1d(module) and leaf == "weight":
        return Layout((1,), (0,), "transformers Conv1D (in, out)")
    if isinstance(module, nn.Linear) and leaf == "weight":
        return Layout((0,), (1,), "nn.Linear (out, in)")
    if isinstance(module, nn.Embedding) and leaf == "weight":
        return Layout((0,), (1,), "nn.Embedding (tokens, dim)", embed=(1,))
    if isinstance(module, nn.modules.conv._ConvTransposeNd) and leaf == "weight":
        return Layout((1,), (0, *range(2, n)), f"nn.{type(module).__name__} (in, out, *kernel)")
    if isinstance(module, nn.modules.conv._ConvNd) and leaf == "weight":
        return Layout((0,), tuple(range(1, n)), f"nn.{type(module).__name__} (out, in, *kernel)")
    if isinstance(module, nn.MultiheadAttention) and leaf in ("in_proj_weight", "q_proj_weight",
                                                              "k_proj_weight", "v_proj_weight"):
        return Layout((0,), (1,), "nn.MultiheadAttention (out, in)")
    return None


def _find_config(model: nn.Module) -> Any:
    """The transformers config of ``model``, looking through DDP's ``module`` and torch.compile's ``_orig_mod``."""
    for _ in range(4):
        config = getattr(model, "config", None)
        if config is not None:
            return config
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return None
        model = inner
    return None


def model_layouts(model: nn.Module) -> dict[str, Layout]:
    """Layout of every parameter of ``model`` (names as ``model.named_parameters()`` gives them).

    A parameter whose module type is unknown gets the (out, in) convention with ``source`` saying it was
    assumed; fused weights get their blocks (read with the model's config where one is needed).
    """
    config = _find_config(model)
    out: dict[str, Layout] = {}
    seen: set[int] = set()
    for mod_name, module in model.named_modules(remove_duplicate=True):
        for leaf, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            name = f"{mod_name}.{leaf}" if mod_name else leaf
            lay = module_layout(module, leaf, p.shape)
            if lay is None:
                lay = default_layout(p.shape, f"{type(module).__name__}: unknown module, assumed (out, in)")
            out[name] = _with_blocks(name, p.shape, lay, config)
    return out


def _with_blocks(name: str, shape: Sequence[int], lay: Layout, config: Any) -> Layout:
    """Attach fused blocks to a fused weight's layout (or a note saying why it has none)."""
    if len(shape) < 2 or layer_type(name, shape) not in ("qkv_fused", "mlp_gate_up"):
        return lay
    if len(lay.fan_out) != 1:
        return replace(lay, note="fused weight with several output dims: blocks not read")
    blocks, why = fused_blocks(name, shape, lay.fan_out[0], config)
    return replace(lay, blocks=blocks, note=why)


def name_layouts(named_shapes: Iterable[tuple[str, Sequence[int]]]) -> dict[str, Layout]:
    """Layouts from names and shapes alone: (out, in) assumed; Conv1D-style names marked ambiguous.

    Fused QKV weights get equal-thirds blocks along whichever dim is three times the other (a
    (3d, d) weight splits along dim 0, a Conv1D-style (d, 3d) one along dim 1); anything else (grouped
    query, interleaved heads) needs the model.
    """
    out: dict[str, Layout] = {}
    for name, shape in named_shapes:
        shape = tuple(int(s) for s in shape)
        lay = default_layout(shape)
        module, _ = module_name(name)
        kind = layer_type(name, shape) if len(shape) >= 2 else ""
        if len(shape) == 2 and module in CONV1D_NAMES:
            lay = replace(lay, ambiguous=(f"{module!r} is stored (in, out) by Hugging Face's Conv1D and (out, in) by "
                                          "nn.Linear; from names alone (out, in) is assumed"))
        if kind == "qkv_fused" and len(shape) == 2 and module != "query_key_value":
            if shape[1] == 3 * shape[0] and shape[0] != shape[1]:
                lay = replace(lay, fan_out=(1,), fan_in=(0,), source="name and shape ((d, 3d): Conv1D (in, out))",
                              ambiguous="")
            lay = _with_blocks(name, shape, lay, None)
        elif kind in ("qkv_fused", "mlp_gate_up") and len(shape) == 2:
            lay = _with_blocks(name, shape, lay, None)
        out[name] = lay
    return out

