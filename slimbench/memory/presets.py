"""Model presets for memory audits and profiles: GPT-2 small / medium, Llama-3.2-1B, Llama-3-8B, and tiny
versions of each for tests.

These are light definitions whose job is to have the right parameter *names and shapes* (the optimizer
state depends on nothing else), plus a plain forward pass so the tiny ones can be profiled for real.
Names follow the checkpoints' conventions, which :func:`slimbench.layers.layer_type` recognises:

* GPT-2 (nanoGPT names): ``transformer.wte / wpe / h.{i}.ln_1 / attn.* / ln_2 / mlp.c_fc / mlp.c_proj /
  ln_f`` and ``lm_head`` tied to ``wte`` (one tensor; ``named_parameters`` lists it once as ``wte``).
  nanoGPT fuses Q, K and V into ``attn.c_attn``; SlimAdam's paper rules cannot compress a fused QKV
  weight (Q/K want fan_in, V wants fan_out), so the default GPT-2 presets split it into ``attn.q_proj /
  k_proj / v_proj`` as the paper's models do, and the ``-fused`` presets keep nanoGPT's ``c_attn`` to
  show what the audit reports for a fused weight. Linear weights are stored (out, in), not as HF
  ``Conv1D`` (in, out).
* The paper's own GPT-2 (``gpt2-*-paper``, names of the reference code, github.com/dayal-kalra/low-memory-adam
  ``utils/model.py``): bias-free, tied, split Q/K/V: ``transformer.wte / wpe / h.{i}.ln_1 / attn.k_proj /
  q_proj / v_proj / output_proj / ln_2 / mlp.mlp_up / mlp.mlp_proj / ln_f`` (LayerNorms have no bias).
* Llama (Hugging Face names): ``model.embed_tokens / layers.{i}.input_layernorm / self_attn.{q,k,v,o}_proj /
  post_attention_layernorm / mlp.{gate,up,down}_proj / model.norm`` and ``lm_head`` (tied in 3.2-1B,
  untied in 3-8B), grouped-query attention (k/v have ``n_kv_heads * head_dim`` rows).

One zoo with :mod:`slimbench.tasks.models`: the pieces whose maths is the same in both (RMSNorm, rotary
positions) are the tasks' own. The blocks and models stay separate because building these presets from the
tasks' GPT / Llama would change their names, shapes or counts: the tasks' models name parameters
slimbench's way at the top level (``tok_emb``, ``blocks.{i}.attn.q``, ``mlp.up``, ``head``), a contract of
their own (SNR files, rules and committed run results key off those names), while a preset must carry a
checkpoint's nesting and names (``transformer.h.{i}.attn.q_proj``, ``model.layers.{i}.self_attn.q_proj``);
the tasks' blocks are bias-free (GPT-2's 124.5M counts a bias in every Linear and LayerNorm), have no
fused ``c_attn``, no grouped-query attention (k/v of ``n_kv_head * head_dim`` rows) and an always-untied
Llama head; and they return logits where a preset's ``forward(idx, targets)`` returns the loss.

Sizes (parameters, counted once; checked by the tests): gpt2-small 124.5M (vocab 50304, the nanoGPT
padding of 50257 to a multiple of 64), gpt2-small-paper 124.4M (124,373,760), gpt2-medium 354.9M, llama-3.2-1b 1.236B, llama-3-8b 8.030B.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Shared with the tasks' models (one zoo): RMSNorm and rotary positions are the same maths in both.
from slimbench.tasks.models import RMSNorm, apply_rope, rope_tables


@dataclass(frozen=True)
class GPT2Config:
    vocab_size: int = 50304  # GPT-2's 50257 padded to a multiple of 64 (nanoGPT)
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    bias: bool = True  # GPT-2 has biases in Linears and LayerNorms
    fused_qkv: bool = False  # True: nanoGPT's attn.c_attn; False: attn.q_proj / k_proj / v_proj
    naming: str = "nanogpt"  # "paper": the reference code's names (k/q/v_proj, output_proj, mlp_up, mlp_proj)

    def __post_init__(self) -> None:
        if self.naming not in ("nanogpt", "paper"):
            raise ValueError(f"GPT2Config.naming must be 'nanogpt' or 'paper', got {self.naming!r}")
        if self.naming == "paper" and self.fused_qkv:
            raise ValueError("GPT2Config: naming='paper' has split Q/K/V; it cannot be combined with fused_qkv=True")


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int = 128256
    block_size: int = 2048  # only used by the forward pass (RoPE tables are not parameters)
    n_layer: int = 16
    n_head: int = 32
    n_kv_head: int = 8
    n_embd: int = 2048
    ffn_dim: int = 8192
    tie_embeddings: bool = True
    rope_theta: float = 500000.0

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


class _GPT2Attention(nn.Module):
    def __init__(self, cfg: GPT2Config) -> None:
        super().__init__()
        d = cfg.n_embd
        self.n_head = cfg.n_head
        if cfg.fused_qkv:
            self.c_attn = nn.Linear(d, 3 * d, bias=cfg.bias)
        elif cfg.naming == "paper":  # the reference code creates k, q, v in this order
            self.k_proj = nn.Linear(d, d, bias=cfg.bias)
            self.q_proj = nn.Linear(d, d, bias=cfg.bias)
            self.v_proj = nn.Linear(d, d, bias=cfg.bias)
        else:
            self.q_proj = nn.Linear(d, d, bias=cfg.bias)
            self.k_proj = nn.Linear(d, d, bias=cfg.bias)
            self.v_proj = nn.Linear(d, d, bias=cfg.bias)
        self.out_name = "output_proj" if cfg.naming == "paper" else "c_proj"
        setattr(self, self.out_name, nn.Linear(d, d, bias=cfg.bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape  # batch, time, channels
        if hasattr(self, "c_attn"):
            q, k, v = self.c_attn(x).split(C, dim=2)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return getattr(self, self.out_name)(y.transpose(1, 2).reshape(B, T, C))


class _GPT2MLP(nn.Module):
    def __init__(self, cfg: GPT2Config) -> None:
        super().__init__()
        self.up_name, self.down_name = ("mlp_up", "mlp_proj") if cfg.naming == "paper" else ("c_fc", "c_proj")
        setattr(self, self.up_name, nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias))
        setattr(self, self.down_name, nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up, down = getattr(self, self.up_name), getattr(self, self.down_name)
        return down(F.gelu(up(x), approximate="tanh"))


class _GPT2Block(nn.Module):
    def __init__(self, cfg: GPT2Config) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = _GPT2Attention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = _GPT2MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT2(nn.Module):
    """GPT-2 with nanoGPT's parameter names; ``forward(idx, targets)`` returns the mean LM loss."""

    def __init__(self, cfg: GPT2Config) -> None:
        super().__init__()
        self.config = cfg
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
            wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
            h=nn.ModuleList(_GPT2Block(cfg) for _ in range(cfg.n_layer)),
            ln_f=nn.LayerNorm(cfg.n_embd, bias=cfg.bias),
        ))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied: one tensor, named transformer.wte.weight

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        x = self.transformer.wte(idx) + self.transformer.wpe(torch.arange(T, device=idx.device))
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


_RMS_EPS = 1e-5  # Llama 3's rms_norm_eps (the tasks' small Llama uses RMSNorm's 1e-6)


class _LlamaAttention(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        d, hd = cfg.n_embd, cfg.head_dim
        self.n_head, self.n_kv_head, self.theta = cfg.n_head, cfg.n_kv_head, cfg.rope_theta
        self.q_proj = nn.Linear(d, cfg.n_head * hd, bias=False)
        self.k_proj = nn.Linear(d, cfg.n_kv_head * hd, bias=False)
        self.v_proj = nn.Linear(d, cfg.n_kv_head * hd, bias=False)
        self.o_proj = nn.Linear(cfg.n_head * hd, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, -1).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k_proj(x).view(B, T, self.n_kv_head, -1).transpose(1, 2)  # (B, nkv, T, hs)
        v = self.v_proj(x).view(B, T, self.n_kv_head, -1).transpose(1, 2)
        cos, sin = (t.to(x) for t in rope_tables(T, q.shape[-1], self.theta))  # not parameters: built per call
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        rep = self.n_head // self.n_kv_head
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class _LlamaMLP(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.n_embd, cfg.ffn_dim, bias=False)
        self.up_proj = nn.Linear(cfg.n_embd, cfg.ffn_dim, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_dim, cfg.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class _LlamaLayer(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.n_embd, eps=_RMS_EPS)
        self.self_attn = _LlamaAttention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.n_embd, eps=_RMS_EPS)
        self.mlp = _LlamaMLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class _LlamaBody(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.layers = nn.ModuleList(_LlamaLayer(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.n_embd, eps=_RMS_EPS)


class Llama(nn.Module):
    """Llama with Hugging Face parameter names; ``forward(idx, targets)`` returns the mean LM loss."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.config = cfg
        self.model = _LlamaBody(cfg)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight  # named model.embed_tokens.weight

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = self.model.embed_tokens(idx)
        for layer in self.model.layers:
            x = layer(x)
        logits = self.lm_head(self.model.norm(x))
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


PRESETS: dict[str, GPT2Config | LlamaConfig] = {
    "gpt2-small": GPT2Config(),
    "gpt2-small-fused": GPT2Config(fused_qkv=True),
    "gpt2-medium": GPT2Config(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-medium-fused": GPT2Config(n_layer=24, n_head=16, n_embd=1024, fused_qkv=True),
    # the paper's reference GPT-2 (Appendix B.1): no biases, tied embedding/head, split Q/K/V, its own names
    "gpt2-small-paper": GPT2Config(bias=False, naming="paper"),
    "gpt2-medium-paper": GPT2Config(n_layer=24, n_head=16, n_embd=1024, bias=False, naming="paper"),
    "llama-3.2-1b": LlamaConfig(),
    "llama-3-8b": LlamaConfig(n_layer=32, n_head=32, n_kv_head=8, n_embd=4096, ffn_dim=14336, tie_embeddings=False),
    # tiny versions: same names and structure, small enough to allocate and profile in tests
    "gpt2-tiny": GPT2Config(vocab_size=256, block_size=64, n_layer=2, n_head=4, n_embd=64),
    "gpt2-tiny-fused": GPT2Config(vocab_size=256, block_size=64, n_layer=2, n_head=4, n_embd=64, fused_qkv=True),
    "gpt2-tiny-paper": GPT2Config(vocab_size=256, block_size=64, n_layer=2, n_head=4, n_embd=64, bias=False,
                                  naming="paper"),
    "llama-tiny": LlamaConfig(vocab_size=256, block_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=64, ffn_dim=128,
                              tie_embeddings=False),
}


def preset_config(name: str) -> GPT2Config | LlamaConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}") from None


_RESIDUAL_PROJECTIONS = ("c_proj.weight", "o_proj.weight", "down_proj.weight", "output_proj.weight", "mlp_proj.weight")


def build_model(name: str | GPT2Config | LlamaConfig, device: str | torch.device = "meta", *,
                seed: int = 0) -> nn.Module:
    """Build preset ``name`` (or a config, e.g. a preset's with overrides) on ``device``. On "meta" nothing
    is allocated (shapes only); elsewhere weights get GPT-2's N(0, 0.02) init with the residual projections
    scaled by 1/sqrt(2 n_layer)."""
    cfg = preset_config(name) if isinstance(name, str) else name
    with torch.device(device):
        model = GPT2(cfg) if isinstance(cfg, GPT2Config) else Llama(cfg)
    if torch.device(device).type != "meta":
        g = torch.Generator(device="cpu").manual_seed(seed)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.endswith("bias"):
                    p.zero_()
                elif p.dim() >= 2:
                    std = 0.02 / math.sqrt(2 * cfg.n_layer) if n.endswith(_RESIDUAL_PROJECTIONS) else 0.02
                    p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def preset_info(name: str, cfg: GPT2Config | LlamaConfig | None = None) -> dict:
    """Config of a preset (or ``cfg``, the preset with overrides) as a dict, with its family."""
    cfg = preset_config(name) if cfg is None else cfg
    return {"name": name, "family": "gpt2" if isinstance(cfg, GPT2Config) else "llama", **asdict(cfg)}
