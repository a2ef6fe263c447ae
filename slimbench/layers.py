"""Layer type of a parameter from its name and shape: the one place that knows naming conventions.

SlimAdam's paper rules are stated per layer type (attention query/key, value/output, MLP, embedding,
head, norm). Models name those layers differently, so this module maps the names used by slimbench's own
models, nanoGPT / GPT-2 and Hugging Face transformers (Llama, Mistral, BERT, ViT, ...) onto one small
vocabulary of layer types, and says which tensor dims "fan_in", "fan_out" and "both" mean for a shape.

Dim convention (tensor dims, as stored):
    Linear weight (out, in):        dim 0 = fan_out, dim 1 = fan_in
    Embedding (tokens, dim):        dim 0 = token dim, dim 1 = embedding dim
    Conv weight (out, in, kh, kw):  fan_out = (0,), fan_in = (1, 2, 3)
An LM head stored as a Linear (vocab, dim) therefore has its embedding dim at dim 1, like the embedding.
Which stored dim holds which role is not decided here but in :mod:`slimbench.layouts`, from the module
that owns the weight (Hugging Face GPT-2's ``Conv1D`` stores (in, out)); this module only names layer types.
"""
from __future__ import annotations

from collections.abc import Sequence

# Layer types, with the paper's recommended compression dims for a 2-D (out, in) weight
# (Kalra et al. 2025, Sec. 5 and Table 2). None means "leave uncompressed".
PAPER_DIMS: dict[str, str | None] = {
    "query": "fan_in",
    "key": "fan_in",
    "value": "fan_out",
    "attn_out": "fan_out",
    "mlp_up": "fan_out",
    "mlp_gate": "fan_out",
    "mlp_down": "fan_out",
    "embedding": "embed",  # (tokens, dim): share along the embedding dim, never the token dim
    "pos_embedding": "embed",
    "head": "embed",  # (vocab, dim) stored like a Linear: embedding dim is dim 1
    "qkv_fused": None,  # Q|K|V in one tensor: compressed per block (slimbench.layouts), not as a whole
    "mlp_gate_up": None,  # gate|up in one tensor (Phi-3 gate_up_proj): per block, like qkv_fused
    "norm": None,
    "bias": None,
    "vector": None,
    "patch_embedding": None,  # ViT patch projection: no paper rule; derive one with `slimbench snr`
    "conv": None,  # the paper gives no conv rule; derive one with `slimbench snr`
    "other": None,
}

LAYER_TYPES: tuple[str, ...] = tuple(PAPER_DIMS)

# Module names (the path component before ".weight") for each layer type. Lower-case, exact match.
_BY_MODULE: dict[str, tuple[str, ...]] = {
    "query": ("q", "q_proj", "query", "wq", "to_q", "q_lin"),
    "key": ("k", "k_proj", "key", "wk", "to_k", "k_lin"),
    "value": ("v", "v_proj", "value", "wv", "to_v", "v_lin"),
    "attn_out": ("o", "o_proj", "out_proj", "wo", "to_out", "out_lin", "dense_out", "output_proj", "attn_proj"),
    "qkv_fused": ("c_attn", "qkv", "qkv_proj", "query_key_value", "wqkv", "in_proj", "to_qkv"),
    "mlp_gate_up": ("gate_up_proj", "w13"),
    "mlp_up": ("up", "up_proj", "c_fc", "fc1", "w3", "fc_in", "lin1", "dense_h_to_4h", "wi", "wi_1", "mlp_up",
               "mlp_fc"),
    "mlp_gate": ("gate", "gate_proj", "w1", "wi_0"),
    "mlp_down": ("down", "down_proj", "fc2", "w2", "fc_out", "lin2", "dense_4h_to_h", "mlp_proj", "mlp_down"),
    "embedding": ("tok_emb", "wte", "embed_tokens", "word_embeddings", "tok_embeddings", "embed_in",
                  "token_embedding", "embedding", "shared", "token_type_embeddings", "token_embed"),
    "pos_embedding": ("pos_emb", "wpe", "position_embeddings", "pos_embedding", "embed_positions", "pos_embed",
                      "position_embedding"),
    "patch_embedding": ("patch_emb", "patch_embed", "patch_embeddings", "patch_embedding", "conv_proj"),
    "head": ("lm_head", "head", "output", "embed_out", "classifier", "fc", "score"),
}
_MODULE_TO_TYPE = {m: t for t, mods in _BY_MODULE.items() for m in mods}
_NORM_HINTS = ("norm", "ln", "bn", "layernorm", "rmsnorm", "batchnorm")


# Prefixes that wrappers add to parameter names: torch.compile's OptimizedModule, DDP / DataParallel.
WRAPPER_PREFIXES = ("_orig_mod.", "module.")


def strip_wrappers(name: str) -> str:
    """'_orig_mod.module.blocks.0.q.weight' -> 'blocks.0.q.weight' (so rules match wrapped models)."""
    changed = True
    while changed:
        changed = False
        for p in WRAPPER_PREFIXES:
            if name.startswith(p):
                name, changed = name[len(p):], True
    return name


def module_name(name: str) -> tuple[str, str]:
    """Split 'blocks.0.attn.q.weight' into ('q', 'weight'); a bare 'in_proj_weight' into ('in_proj', 'weight').

    A parameter held directly by a module under a layer's name (ViT's ``embeddings.position_embeddings``,
    a ``pos_emb`` nn.Parameter) is that layer: ('position_embeddings', 'weight').
    """
    parts = name.lower().split(".")
    leaf = parts[-1]
    if leaf in _MODULE_TO_TYPE and leaf not in ("weight", "bias"):
        return leaf, "weight"
    if leaf.endswith("_weight") or leaf.endswith("_bias"):  # nn.MultiheadAttention's in_proj_weight
        stem, _, kind = leaf.rpartition("_")
        return stem, kind
    module = parts[-2] if len(parts) > 1 else leaf
    return module, leaf


def _is_norm(module: str) -> bool:
    return any(module == h or module.startswith(h) or module.endswith(h) for h in _NORM_HINTS) or module in (
        "ln_1", "ln_2", "ln_f", "input_layernorm", "post_attention_layernorm", "final_layernorm")


def layer_type(name: str, shape: Sequence[int]) -> str:
    """The layer type of parameter ``name`` with ``shape`` (one of :data:`LAYER_TYPES`).

    1-D tensors are norm, bias or vector and are never compressed by type-based rules. ``c_proj`` is
    the attention output in an ``attn`` block and the MLP down projection in an ``mlp`` block (nanoGPT).
    """
    module, leaf = module_name(strip_wrappers(name))
    ndim = len(shape)
    if leaf == "bias":
        return "bias"
    if _is_norm(module) and module not in _MODULE_TO_TYPE:
        return "norm"
    if ndim <= 1:
        return "vector"
    path = name.lower()
    if module in ("c_proj", "dense", "wo"):  # context decides: GPT-2 / BERT / T5 naming
        if "mlp" in path or "densereludense" in path or ("output.dense" in path and "attention" not in path):
            return "mlp_down"
        if "intermediate.dense" in path:  # BERT's MLP up projection
            return "mlp_up"
        if "attn" in path or "attention" in path:
            return "attn_out"
        return "other"
    kind = _MODULE_TO_TYPE.get(module, "other")
    if ndim == 4 and kind not in ("embedding", "pos_embedding", "patch_embedding"):
        return "conv"  # (out, in, kh, kw)
    if ndim == 3 and kind not in ("embedding", "pos_embedding"):
        return "other"  # e.g. a ViT class token (1, 1, d)
    return kind


_ALIASES = ("none", "fan_out", "fan_in", "both", "all", "embed", "token")


def parse_dims(spec: object, shape: Sequence[int], layer: str = "other", *,
               fan_out: Sequence[int] | None = None, fan_in: Sequence[int] | None = None,
               embed: Sequence[int] | None = None) -> tuple[int, ...]:
    """Turn a dims spec into a sorted tuple of tensor dims for ``shape``.

    ``spec`` is an alias ("none", "fan_out", "fan_in", "both"/"all", "embed", "token"), or a sequence
    of ints (stored dims; negative allowed), or None (= "none"). Aliases are roles: ``fan_out`` /
    ``fan_in`` / ``embed`` give the stored dims that hold them (from :mod:`slimbench.layouts`; default
    the (out, in, ...) convention). "embed" defaults to the fan_in of a head and the last dim otherwise
    (dim 1 of a (tokens, dim) table or a (vocab, dim) head; dim 2 of a ViT (1, n, dim) position table);
    "token" is every other dim. Raises ValueError for a dim the tensor lacks.
    """
    ndim = len(shape)
    if spec is None:
        return ()
    fo = tuple(fan_out) if fan_out is not None else (0,)
    fi = tuple(fan_in) if fan_in is not None else tuple(range(1, ndim))
    emb = tuple(embed) if embed is not None else (fi if layer == "head" and fan_in is not None else (ndim - 1,))
    if isinstance(spec, str):
        s = spec.strip().lower()
        if s in ("none", "", "()"):
            return ()
        if s in ("fan_out", "token", "fan_in", "embed") and ndim < 2:
            raise ValueError(f"dims {spec!r} need a tensor with >= 2 dims, got shape {tuple(shape)}")
        if s == "fan_out":
            dims: tuple[int, ...] = fo
        elif s == "fan_in":
            dims = fi
        elif s == "embed":
            dims = emb
        elif s == "token":
            dims = tuple(d for d in range(ndim) if d not in emb)
        elif s in ("both", "all"):
            dims = tuple(range(ndim))
        else:
            try:  # "0,1" or "1"
                dims = tuple(int(x) for x in s.strip("()[]").split(",") if x.strip())
            except ValueError:
                raise ValueError(f"unknown dims {spec!r}: use one of {', '.join(_ALIASES)} or a list of ints") from None
    else:
        if isinstance(spec, (bool, float)) or not isinstance(spec, Sequence) or any(
                isinstance(d, (bool, float)) for d in spec):  # type: ignore[union-attr]
            raise ValueError(f"dims must be an alias string or a list of ints, got {spec!r}")
        try:
            dims = tuple(int(d) for d in spec)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            raise ValueError(f"dims must be an alias string or a list of ints, got {spec!r}") from None
    return normalize_dims(dims, shape)


def normalize_dims(dims: Sequence[int], shape: Sequence[int]) -> tuple[int, ...]:
    """Sorted non-negative dims; ValueError for a dim the tensor lacks or a repeated dim."""
    ndim = len(shape)
    out = []
    for d in dims:
        if not -ndim <= d < ndim:
            raise ValueError(f"dim {d} does not exist for a tensor of shape {tuple(shape)} ({ndim} dims)")
        out.append(d % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"dims {tuple(dims)} repeat a dim")
    return tuple(sorted(out))


def dims_label(dims: Sequence[int], shape: Sequence[int]) -> str:
    """Human name of dims for a shape: 'none', 'fan_out', 'fan_in', 'both', or the list."""
    dims = tuple(dims)
    ndim = len(shape)
    if not dims:
        return "none"
    if ndim >= 2 and dims == tuple(range(ndim)):
        return "both"
    if ndim >= 2 and dims == (0,):
        return "fan_out"
    if ndim >= 2 and dims == tuple(range(1, ndim)):
        return "fan_in"
    return ",".join(str(d) for d in dims)
