"""Model presets for memory audits and profiles: GPT-2 small / medium, Llama-3.2-1B, Llama-3-8B, and tiny
versions of each for tests.

Each preset is a config in the table :data:`PRESETS` that builds the tasks' own models (one zoo):
:class:`slimbench.tasks.models.GPT` or :class:`~slimbench.tasks.models.Llama` under a checkpoint's
:class:`~slimbench.tasks.blocks.Naming`, with the options that checkpoint needs. The optimizer state
depends on nothing but the parameters' names and shapes; a plain forward pass lets the tiny ones be
profiled for real. Names follow the checkpoints' conventions, which :func:`slimbench.layers.layer_type`
recognises:

* GPT-2 (nanoGPT names, :data:`NANOGPT_NAMES`): ``transformer.wte / wpe / h.{i}.ln_1 / attn.* / ln_2 /
  mlp.c_fc / mlp.c_proj / ln_f`` and ``lm_head`` tied to ``wte`` (one tensor; ``named_parameters`` lists it
  once as ``wte``); biases in every Linear and LayerNorm, tanh GELU. nanoGPT fuses Q, K and V into
  ``attn.c_attn``; SlimAdam's paper rules want Q/K along fan_in and V along fan_out, so the default GPT-2
  presets split it into ``attn.q_proj / k_proj / v_proj`` as the paper's models do, and the ``-fused``
  presets keep nanoGPT's ``c_attn`` (``fused_qkv``) to show what the audit reports for a fused weight.
  Linear weights are stored (out, in), not as HF ``Conv1D`` (in, out).
* The paper's own GPT-2 (``gpt2-*-paper``, :data:`PAPER_NAMES`, names of the reference code,
  github.com/dayal-kalra/low-memory-adam ``utils/model.py``): bias-free, tied, split Q/K/V created k, q, v:
  ``transformer.wte / wpe / h.{i}.ln_1 / attn.k_proj / q_proj / v_proj / output_proj / ln_2 / mlp.mlp_up /
  mlp.mlp_proj / ln_f`` (LayerNorms have no bias).
* Llama (Hugging Face names, :data:`HF_LLAMA_NAMES`): ``model.embed_tokens / layers.{i}.input_layernorm /
  self_attn.{q,k,v,o}_proj / post_attention_layernorm / mlp.{gate,up,down}_proj / model.norm`` and
  ``lm_head`` (tied in 3.2-1B, untied in 3-8B), grouped-query attention (k/v have ``n_kv_head * head_dim``
  rows), RMSNorm eps 1e-5, rope theta 500000.

The classes here only translate a preset's config to the tasks' config and options, keep the preset's
config as ``model.config`` (tools read it: Adam-mini's head counts) and make ``forward(idx, targets)``
return the mean LM loss. Nothing stays separate. Construction uses torch's default init (``init="torch"``;
the same modules in the same order as the standalone definitions this replaced, so the same draws of
the global RNG); weights on a real device come from :func:`build_model`'s seeded N(0, 0.02), as before.
``tests/test_zoo.py`` holds every preset's ordered names, shapes and dtypes, and the tiny presets' initial
weights, to a fixture written before the merge; the audits' output is unchanged. What did change is not a
parameter: the module classes (``Block``, ``Attention``, ``SwiGLU`` ...), Llama's rotary tables (now
non-persistent buffers built once, as the tasks' Llama does, not rebuilt in each forward, which lowers
``profile --model llama-tiny``'s forward/backward figure by about 0.01 MiB), and a sequence longer than
``block_size`` is now a one-line ValueError.

Sizes (parameters, counted once; checked by the tests): gpt2-small 124.5M (vocab 50304, the nanoGPT
padding of 50257 to a multiple of 64), gpt2-small-paper 124.4M (124,373,760), gpt2-medium 354.9M,
llama-3.2-1b 1.236B, llama-3-8b 8.030B.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from slimbench.tasks import models as _tasks
from slimbench.tasks.blocks import Naming


# The checkpoints' names: one Naming per scheme, for the tasks' GPT and Llama.
NANOGPT_NAMES = Naming(body="transformer", tok_emb="wte", pos_emb="wpe", blocks="h", norm1="ln_1", attn="attn",
                       q="q_proj", k="k_proj", v="v_proj", qkv="c_attn", o="c_proj", norm2="ln_2", mlp="mlp",
                       up="c_fc", down="c_proj", norm_f="ln_f", head="lm_head")
PAPER_NAMES = dataclasses.replace(NANOGPT_NAMES, qkv_order="kqv", o="output_proj", up="mlp_up", down="mlp_proj")
HF_LLAMA_NAMES = Naming(body="model", tok_emb="embed_tokens", blocks="layers", norm1="input_layernorm",
                        attn="self_attn", q="q_proj", k="k_proj", v="v_proj", o="o_proj",
                        norm2="post_attention_layernorm", mlp="mlp", gate="gate_proj", up="up_proj",
                        down="down_proj", norm_f="norm", head="lm_head")
GPT2_NAMINGS = {"nanogpt": NANOGPT_NAMES, "paper": PAPER_NAMES}  # GPT2Config.naming -> names


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
        if self.naming not in GPT2_NAMINGS:
            raise ValueError(f"GPT2Config.naming must be one of {', '.join(GPT2_NAMINGS)}, got {self.naming!r}")
        if self.naming == "paper" and self.fused_qkv:
            raise ValueError("GPT2Config: naming='paper' has split Q/K/V; it cannot be combined with fused_qkv=True")


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int = 128256
    block_size: int = 2048  # longest sequence; sizes the RoPE tables (buffers, not parameters)
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


_RMS_EPS = 1e-5  # Llama 3's rms_norm_eps (the tasks' small Llama uses RMSNorm's 1e-6)


def _lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


class GPT2(_tasks.GPT):
    """The tasks' GPT under GPT-2's (nanoGPT's or the paper's) names, with GPT-2's biases and tanh GELU;
    ``forward(idx, targets)`` returns the mean LM loss."""

    def __init__(self, cfg: GPT2Config) -> None:
        tasks_cfg = _tasks.GPTConfig(vocab_size=cfg.vocab_size, block_size=cfg.block_size, n_layer=cfg.n_layer,
                                     n_head=cfg.n_head, d_model=cfg.n_embd, mlp_ratio=4, init="torch", tie_head=True)
        super().__init__(tasks_cfg, naming=GPT2_NAMINGS[cfg.naming], bias=cfg.bias,
                         fused_qkv=cfg.fused_qkv, gelu="tanh")
        self.config = cfg  # the preset's, as tools read it (Adam-mini's heads); block_size means the same

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return _lm_loss(super().forward(idx), targets)


class Llama(_tasks.Llama):
    """The tasks' Llama under Hugging Face's names, with grouped-query attention, Llama 3's RMSNorm eps and
    (3.2) a tied head; ``forward(idx, targets)`` returns the mean LM loss."""

    def __init__(self, cfg: LlamaConfig) -> None:
        tasks_cfg = _tasks.LlamaConfig(vocab_size=cfg.vocab_size, block_size=cfg.block_size, n_layer=cfg.n_layer,
                                       n_head=cfg.n_head, d_model=cfg.n_embd, hidden=cfg.ffn_dim,
                                       rope_base=cfg.rope_theta, init="torch")
        super().__init__(tasks_cfg, naming=HF_LLAMA_NAMES, n_kv_head=cfg.n_kv_head, tie_head=cfg.tie_embeddings,
                         norm_eps=_RMS_EPS)
        self.config = cfg  # the preset's, as tools read it (Adam-mini's heads); block_size means the same

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return _lm_loss(super().forward(idx), targets)


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


_RESIDUAL_PROJECTIONS = tuple(end for names in (NANOGPT_NAMES, PAPER_NAMES, HF_LLAMA_NAMES) for end in names.residual())


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
