"""Transformer building blocks of the tasks' GPT, Llama and ViT (:mod:`slimbench.tasks.models`), and the
:class:`Naming` that lets the audit presets build the same blocks under a checkpoint's names.

Shapes: B = batch, T = sequence length, C = d_model, nh = heads, hs = C // nh.

Every option is keyword-only and defaults to the tasks' blocks exactly: the same modules created in the
same order, so the same init draws (``tests/test_zoo.py`` holds them to frozen hashes).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


# ---------------------------------------------------------------------------------------------------------
# Names: slimbench's own, or a checkpoint's (the audit presets)


@dataclass(frozen=True)
class Naming:
    """Attribute names of a decoder's parts, so one model carries slimbench's names (the defaults) or a
    checkpoint's. Names only: the modules, their maths and their creation order (hence the init draws) are the
    same under every naming; ``qkv_order`` is there for a checkpoint's code that creates k before q."""

    body: str = ""  # container of embeddings, blocks and final norm ("transformer", "model"); "" = the model
    tok_emb: str = "tok_emb"
    pos_emb: str = "pos_emb"
    blocks: str = "blocks"
    norm1: str = "ln1"
    attn: str = "attn"
    q: str = "q"
    k: str = "k"
    v: str = "v"
    qkv: str = "qkv"  # the fused Q|K|V projection (fused_qkv=True), Q, K, V stacked on the output dim
    qkv_order: str = "qkv"  # creation order of the separate q, k, v
    o: str = "o"
    norm2: str = "ln2"
    mlp: str = "mlp"
    gate: str = "gate"
    up: str = "up"
    down: str = "down"
    norm_f: str = "ln_f"
    head: str = "head"  # always on the model itself, never in the body

    def __post_init__(self) -> None:
        if sorted(self.qkv_order) != ["k", "q", "v"]:
            raise ValueError(f"Naming.qkv_order must order the letters q, k, v; got {self.qkv_order!r}")

    def residual(self) -> tuple[str, str]:
        """Name endings of the residual projections (attention output, MLP down), scaled at init."""
        return f"{self.attn}.{self.o}.weight", f"{self.mlp}.{self.down}.weight"

    def add_body(self, model: nn.Module) -> nn.Module:
        """Where ``model``'s embeddings, blocks and final norm go: ``model``, or a new container ``body`` in it
        (a checkpoint's nesting, ``transformer.h.0...``)."""
        if not self.body:
            return model
        model.add_module(self.body, nn.ModuleDict())
        return getattr(model, self.body)

    def part(self, model: nn.Module, role: str) -> nn.Module:
        """``model``'s part with role ``role`` (a field name: "tok_emb", "blocks", "head", ...)."""
        owner = getattr(model, self.body) if self.body and role != "head" else model
        return getattr(owner, getattr(self, role))


GPT_NAMES = Naming()
LLAMA_NAMES = Naming(norm1="norm1", norm2="norm2", norm_f="norm_f")


class Attention(nn.Module):
    """Multi-head self-attention with separate q, k, v, o projections (no biases by default).

    ``n_kv_head`` < ``n_head``: grouped-query attention (Llama 3), k and v have ``n_kv_head * hs`` rows and
    each serves ``n_head / n_kv_head`` query heads. ``fused_qkv``: one (3C, C) projection ``naming.qkv``
    (nanoGPT's ``c_attn``) in place of q, k, v.
    """

    def __init__(self, d_model: int, n_head: int, causal: bool, *, n_kv_head: int | None = None,
                 bias: bool = False, fused_qkv: bool = False, naming: Naming = GPT_NAMES):
        super().__init__()
        n_kv_head = n_head if n_kv_head is None else n_kv_head
        if d_model % n_head:
            raise ValueError(f"d_model {d_model} is not divisible by n_head {n_head}")
        if n_kv_head < 1 or n_head % n_kv_head:
            raise ValueError(f"n_kv_head {n_kv_head} must be >= 1 and divide n_head {n_head}")
        if fused_qkv and n_kv_head != n_head:
            raise ValueError("fused_qkv with grouped-query attention (n_kv_head < n_head) is not supported")
        self.n_head, self.n_kv_head, self.causal, self.fused_qkv, self.naming = \
            n_head, n_kv_head, causal, fused_qkv, naming
        if fused_qkv:
            self.add_module(naming.qkv, nn.Linear(d_model, 3 * d_model, bias=bias))
        else:
            rows = {"q": d_model, "k": n_kv_head * (d_model // n_head), "v": n_kv_head * (d_model // n_head)}
            for role in naming.qkv_order:
                self.add_module(getattr(naming, role), nn.Linear(d_model, rows[role], bias=bias))
        self.add_module(naming.o, nn.Linear(d_model, d_model, bias=bias))

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        B, T, C = x.shape
        names = self.naming
        if self.fused_qkv:
            q, k, v = getattr(self, names.qkv)(x).split(C, dim=2)
        else:
            q, k, v = (getattr(self, name)(x) for name in (names.q, names.k, names.v))
        q = q.view(B, T, self.n_head, -1).transpose(1, 2)  # (B, nh, T, hs)
        k, v = (t.view(B, T, self.n_kv_head, -1).transpose(1, 2) for t in (k, v))  # (B, n_kv_head, T, hs)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if self.n_kv_head != self.n_head:
            rep = self.n_head // self.n_kv_head
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # (B, nh, T, hs)
        return getattr(self, names.o)(y.transpose(1, 2).reshape(B, T, C))


GELUS = ("none", "tanh")  # F.gelu's approximate: exact (the tasks), tanh (GPT-2)


class MLP(nn.Module):
    def __init__(self, d_model: int, hidden: int, *, bias: bool = False, gelu: str = "none",
                 naming: Naming = GPT_NAMES):
        super().__init__()
        if gelu not in GELUS:
            raise ValueError(f"unknown gelu {gelu!r}; use one of {', '.join(GELUS)}")
        self.gelu, self.naming = gelu, naming
        self.add_module(naming.up, nn.Linear(d_model, hidden, bias=bias))
        self.add_module(naming.down, nn.Linear(hidden, d_model, bias=bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up, down = getattr(self, self.naming.up), getattr(self, self.naming.down)
        return down(F.gelu(up(x), approximate=self.gelu))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln1(x)), then x + mlp(ln2(x)). LayerNorms without bias by default;
    ``bias=True`` gives every Linear and LayerNorm a bias (GPT-2)."""

    def __init__(self, d_model: int, n_head: int, mlp_ratio: int, causal: bool, *, bias: bool = False,
                 fused_qkv: bool = False, gelu: str = "none", naming: Naming = GPT_NAMES):
        super().__init__()
        self.naming = naming
        self.add_module(naming.norm1, nn.LayerNorm(d_model, bias=bias))
        self.add_module(naming.attn, Attention(d_model, n_head, causal, bias=bias, fused_qkv=fused_qkv, naming=naming))
        self.add_module(naming.norm2, nn.LayerNorm(d_model, bias=bias))
        self.add_module(naming.mlp, MLP(d_model, mlp_ratio * d_model, bias=bias, gelu=gelu, naming=naming))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        names = self.naming
        norm1, attn, norm2, mlp = (getattr(self, n) for n in (names.norm1, names.attn, names.norm2, names.mlp))
        x = x + attn(norm1(x))
        return x + mlp(norm2(x))


class RMSNorm(nn.Module):
    """x / rms(x) * weight (Zhang & Sennrich 2019); no bias, no mean subtraction."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(block_size: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles, (block_size, head_dim / 2) each, fp32 on the default device."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(block_size, dtype=torch.float32), inv_freq)  # (T, hs/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs of x (B, nh, T, hs) by position-dependent angles (Su et al. 2021)."""
    T = x.shape[-2]
    x1, x2 = x[..., 0::2], x[..., 1::2]
    c, s = cos[:T], sin[:T]
    return torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, hidden: int, *, naming: Naming = LLAMA_NAMES):
        super().__init__()
        self.naming = naming
        for name, (d_in, d_out) in ((naming.gate, (d_model, hidden)), (naming.up, (d_model, hidden)),
                                    (naming.down, (hidden, d_model))):
            self.add_module(name, nn.Linear(d_in, d_out, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up, down = (getattr(self, n) for n in (self.naming.gate, self.naming.up, self.naming.down))
        return down(F.silu(gate(x)) * up(x))


class LlamaBlock(nn.Module):
    """Pre-norm Llama block: x + attn(norm1(x), rope), then x + swiglu(norm2(x)), RMSNorms."""

    def __init__(self, d_model: int, n_head: int, hidden: int, *, n_kv_head: int | None = None,
                 norm_eps: float = 1e-6, naming: Naming = LLAMA_NAMES):
        super().__init__()
        self.naming = naming
        self.add_module(naming.norm1, RMSNorm(d_model, eps=norm_eps))
        self.add_module(naming.attn, Attention(d_model, n_head, causal=True, n_kv_head=n_kv_head, naming=naming))
        self.add_module(naming.norm2, RMSNorm(d_model, eps=norm_eps))
        self.add_module(naming.mlp, SwiGLU(d_model, hidden, naming=naming))

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        names = self.naming
        norm1, attn, norm2, mlp = (getattr(self, n) for n in (names.norm1, names.attn, names.norm2, names.mlp))
        x = x + attn(norm1(x), rope)
        return x + mlp(norm2(x))
