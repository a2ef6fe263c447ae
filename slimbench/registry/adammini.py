"""Adam-mini (the adam-mini package): one V per attention head, neuron or token block, partitioned by the
model's shape, which :func:`adam_mini_shape` reads from the model rather than from the user."""
from __future__ import annotations

from typing import Any

from torch import nn

from slimbench.layers import layer_type
from slimbench.registry._common import import_optimizer, is_int, trainable
from slimbench.registry.errors import err
from slimbench.registry.spec import OptimizerSpec

# Attribute pairs (dim, n_heads, n_kv_heads) used by common model configs, tried in order.
_CONFIG_KEYS = (("n_embd", "n_head", "n_kv_head"), ("d_model", "n_heads", "n_kv_heads"),
                ("hidden_size", "num_attention_heads", "num_key_value_heads"), ("dim", "n_heads", "n_kv_heads"),
                ("d_model", "n_head", "n_kv_head"), ("embed_dim", "num_heads", "num_kv_heads"))


def adam_mini_shape(model: nn.Module, dim: int | None = None, n_heads: int | None = None,
                    n_kv_heads: int | None = None) -> tuple[int, int, int | None, str]:
    """(dim, n_heads, n_kv_heads, source) for Adam-mini, from overrides, ``model.config`` or the weights.

    Adam-mini shares one second moment per attention head of the query/key weights, which it finds by
    viewing each as (-1, dim * dim / n_heads); a wrong dim or head count silently changes the partition,
    so the values come from the model's own config whenever it has one.
    """
    source = "override"
    cfg = getattr(model, "config", None)
    if cfg is not None and (dim is None or n_heads is None):
        for d_key, h_key, kv_key in _CONFIG_KEYS:
            if hasattr(cfg, d_key) and hasattr(cfg, h_key):
                dim = dim if dim is not None else int(getattr(cfg, d_key))
                n_heads = n_heads if n_heads is not None else int(getattr(cfg, h_key))
                kv = getattr(cfg, kv_key, None)
                n_kv_heads = n_kv_heads if n_kv_heads is not None else (int(kv) if kv else None)
                source = f"model.config.{d_key}/{h_key}"
                break
    if dim is None:  # infer from a query weight (out, in): in = model dim
        q = next((p for n, p in model.named_parameters() if layer_type(n, p.shape) == "query"), None)
        if q is not None:
            dim, source = int(q.shape[1]), "query weight shape"
        else:
            first2d = next((p for p in model.parameters() if p.dim() == 2), None)
            dim, source = (int(first2d.shape[-1]) if first2d is not None else 1), "no attention found"
    if n_heads is None:
        n_heads = next((int(getattr(m, a)) for m in model.modules()
                        for a in ("n_head", "n_heads", "num_heads") if isinstance(getattr(m, a, None), int)), 1)
    return dim, n_heads, n_kv_heads, source


# slimbench layer type -> the Adam-mini name set that gives that layer its intended partition
_ADAM_MINI_SETS = {"query": "wqk_names", "key": "wqk_names", "value": "wv_names", "attn_out": "attn_proj_names",
                   "mlp_up": "mlp_names", "mlp_gate": "mlp_names", "mlp_down": "mlp_names",
                   "embedding": "embd_names", "pos_embedding": "embd_names", "head": "output_names"}


def _adam_mini(model: nn.Module, lr: float, betas: tuple[float, float], weight_decay: float, *,
               dim: int | None = None, n_heads: int | None = None, n_kv_heads: int | None = None,
               map_names: bool = True, **extra: Any):
    """Adam-mini with dim / heads derived from the model.

    Adam-mini partitions by substrings of parameter names ("q_proj", "wte", "mlp", ...). With
    ``map_names`` (default) each parameter slimbench recognises (:func:`slimbench.layers.layer_type`) is
    added by its full name to the matching Adam-mini set, as Adam-mini's docs tell users to do, so a
    model named ``attn.q`` gets the per-head partition instead of one block-wide V. Fused QKV weights
    are left to Adam-mini's default (one V per tensor).
    """
    cls = import_optimizer("adam-mini", "adam_mini", "Adam_mini")
    named = trainable(model)
    dim, n_heads, n_kv_heads, _ = adam_mini_shape(model, dim, n_heads, n_kv_heads)
    # Adam-mini trains on a negative dim, divides by zero on 0, and asserts "4 3" for a bad n_kv_heads.
    for key, value in (("dim", dim), ("n_heads", n_heads), ("n_kv_heads", n_kv_heads)):
        if value is not None and (not is_int(value) or value <= 0):
            raise ValueError(f"adam-mini: {key} must be a positive int, got {value!r}")
    if n_kv_heads is not None and n_heads % n_kv_heads:
        raise ValueError(f"adam-mini: n_heads {n_heads} is not a multiple of n_kv_heads {n_kv_heads}")
    if dim * dim % n_heads:
        raise ValueError(f"adam-mini: dim {dim} * dim is not divisible by n_heads {n_heads}")
    head_numel = dim * dim // n_heads
    for n, p in named:
        if layer_type(n, p.shape) in ("query", "key") and p.numel() % head_numel:
            raise ValueError(f"adam-mini: {n} {tuple(p.shape)} does not split into heads of dim*dim/n_heads = "
                             f"{head_numel}; pass dim= / n_heads= matching the model")
    opt = cls(named, lr=lr, betas=betas, weight_decay=weight_decay, dim=dim, n_heads=n_heads,
              n_kv_heads=n_kv_heads, verbose=False, **extra)
    if map_names:
        for n, p in named:
            target = _ADAM_MINI_SETS.get(layer_type(n, p.shape))
            if target and p.dim() == 2:  # Adam-mini's per-neuron path assumes matrices: a ViT's (1, n, d)
                # position table mapped to embd_names would crash its step; it stays in the default block.
                getattr(opt, target).add(n.lower())
    return opt


_ADAM_MINI_ERRORS = (
    err({"dim": 0}, "adam-mini: dim must be a positive int, got 0", "zero-dim"),
    err({"n_heads": 0}, "adam-mini: n_heads must be a positive int, got 0", "zero-heads"),
    err({"n_heads": 4, "n_kv_heads": 3}, "adam-mini: n_heads 4 is not a multiple of n_kv_heads 3",
        "kv-heads-do-not-divide-heads"),
    err({"dim": 8, "n_heads": 3}, r"adam-mini: dim 8 \* dim is not divisible by n_heads 3", "heads-do-not-divide-dim"))

SPECS: tuple[OptimizerSpec, ...] = (
    OptimizerSpec("adam-mini", _adam_mini, "Adam-mini: one V per head / neuron / token block (adam-mini pkg)",
                  "slim", needs_names=True, package="adam-mini", module="adam_mini",
                  sharded=True,  # tests/test_distributed.py::test_registry_optimizers_under_fsdp2: == one process at 2, 3 ranks
                  state_class="adam_mini.Adam_mini",
                  second_moment_keys=("vmean", "v"),  # vmean per head / neuron / token / block; v full (biases)
                  state_rule="m (param shape) + vmean per block (+ full v for biases)", transient_budget=(0.0, 3.0),
                  extras=("dim", "n_heads", "n_kv_heads", "map_names", "eps"), own_error_inputs=_ADAM_MINI_ERRORS),
)
