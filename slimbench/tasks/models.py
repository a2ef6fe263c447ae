"""The standard tasks' models: GPT, Llama, a linear LM, ViT, a small ResNet and a digits MLP.

Written to be read top to bottom, after nanoGPT's ``model.py`` (karpathy/nanoGPT). Each model takes a
small config dataclass and initializes every weight in one ``_init_weights``.

Parameter names are a contract: :mod:`slimbench.layers` recognises layer types from them, and SlimAdam's
rules are stated per layer type. So attention projections are separate ``q``, ``k``, ``v``, ``o``
Linears (no fused QKV), MLPs are ``up`` / ``gate`` / ``down``, embeddings ``tok_emb`` / ``pos_emb``, the
output ``head``, norms ``ln*`` / ``norm*`` / ``bn*``.

One zoo: the audit presets (:mod:`slimbench.tasks.presets`: GPT-2, the paper's GPT-2, Llama 3) are these
GPT and Llama under a checkpoint's :class:`Naming` (``transformer.h.{i}.attn.q_proj``,
``model.layers.{i}.self_attn.q_proj``), with the options a checkpoint needs: biases, a fused Q|K|V
projection, GPT-2's tanh GELU, grouped-query attention (``n_kv_head``), a tied Llama head, RMSNorm's eps.
The options are keyword arguments, not config fields, and their defaults are the tasks' models exactly
(same modules, created in the same order, so the same init draws: ``tests/test_zoo.py``), so task configs,
``--set`` keys and run results do not change.

Shapes: B = batch, T = sequence length (tokens or patches), C = d_model, nh = heads, hs = C // nh.

Init ("mitchell", the default for the transformers, as in nanoGPT / GPT-2): every Linear and Embedding
weight ~ N(0, 0.02), biases 0, norms 1, and the residual projections (``attn.o``, ``mlp.down``) ~
N(0, 0.02 / sqrt(2 * n_layer)) so the residual stream's variance does not grow with depth (GPT-2 paper,
Sec. 2.3). ``init="torch"`` keeps PyTorch's default initialization instead.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from slimbench.tasks.blocks import (GELUS, GPT_NAMES, LLAMA_NAMES, MLP, Attention, Block, LlamaBlock, Naming, RMSNorm,
                                    SwiGLU, apply_rope, rope_tables)

__all__ = ["INITS", "GELUS", "GPT_NAMES", "LLAMA_NAMES", "Naming", "Attention", "MLP", "Block", "RMSNorm", "SwiGLU",
           "LlamaBlock", "rope_tables", "apply_rope", "count_params", "GPTConfig", "GPT", "LlamaConfig", "Llama",
           "LinearLMConfig", "LinearLM", "ViTConfig", "ViT", "ResNetConfig", "BasicBlock", "ResNet", "MLPConfig",
           "DigitsMLP"]

INITS = ("mitchell", "torch")


def _check_init(init: str) -> None:
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; use one of {', '.join(INITS)}")


def _mitchell_init(model: nn.Module, n_layer: int,
                   residual: tuple[str, ...] = ("attn.o.weight", "mlp.down.weight")) -> None:
    """N(0, 0.02) for Linear / Embedding weights, zero biases, residual projections (names ending in
    ``residual``) scaled (GPT-2)."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
    for name, p in model.named_parameters():
        if name.endswith(residual):
            nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))


def count_params(model: nn.Module) -> int:
    """Parameters counted once each: a tied embedding/head is one tensor (``named_parameters`` dedups)."""
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------------------
# GPT (and the transformer blocks that ViT shares: slimbench.tasks.blocks)


@dataclass
class GPTConfig:
    vocab_size: int = 96  # character vocabulary of slimbench.tasks.data
    block_size: int = 64  # max sequence length (learned positions)
    n_layer: int = 2
    n_head: int = 2
    d_model: int = 64
    mlp_ratio: int = 4
    init: str = "mitchell"  # or "torch"
    tie_head: bool = True  # head.weight is tok_emb.weight; only tok_emb.weight is a named parameter
    causal: bool = True


class GPT(nn.Module):
    """GPT decoder: token + learned position embeddings, pre-norm blocks, final LayerNorm, (tied) head.

    Keyword options (for the audit presets; the defaults are the tasks' GPT): ``naming``, ``bias``,
    ``fused_qkv``, ``gelu`` as in :class:`Block`.
    """

    def __init__(self, config: GPTConfig, *, naming: Naming = GPT_NAMES, bias: bool = False,
                 fused_qkv: bool = False, gelu: str = "none"):
        super().__init__()
        _check_init(config.init)
        self.config, self.naming = config, naming
        body = naming.add_body(self)
        body.add_module(naming.tok_emb, nn.Embedding(config.vocab_size, config.d_model))
        body.add_module(naming.pos_emb, nn.Embedding(config.block_size, config.d_model))
        body.add_module(naming.blocks, nn.ModuleList(
            Block(config.d_model, config.n_head, config.mlp_ratio, config.causal, bias=bias, fused_qkv=fused_qkv,
                  gelu=gelu, naming=naming) for _ in range(config.n_layer)))
        body.add_module(naming.norm_f, nn.LayerNorm(config.d_model, bias=bias))
        self.add_module(naming.head, nn.Linear(config.d_model, config.vocab_size, bias=False))
        if config.tie_head:
            # Weight tying (Press & Wolf 2017, as GPT-2): one (vocab, C) tensor serves both. It is registered
            # first as tok_emb.weight, so named_parameters() lists it under that name only.
            naming.part(self, "head").weight = naming.part(self, "tok_emb").weight
        if config.init == "mitchell":
            self._init_weights()

    def _init_weights(self) -> None:
        _mitchell_init(self, self.config.n_layer, self.naming.residual())

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) -> logits (B, T, vocab)."""
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        tok_emb, pos_emb, blocks, ln_f, head = (self.naming.part(self, r)
                                                for r in ("tok_emb", "pos_emb", "blocks", "norm_f", "head"))
        x = tok_emb(idx) + pos_emb(torch.arange(T, device=idx.device))  # (B, T, C)
        for block in blocks:
            x = block(x)
        return head(ln_f(x))


# ---------------------------------------------------------------------------------------------------------
# Llama (RMSNorm, rotary positions, SwiGLU), for the fine-tuning task


@dataclass
class LlamaConfig:
    vocab_size: int = 96
    block_size: int = 64  # longest sequence the rotary tables cover
    n_layer: int = 2
    n_head: int = 2
    d_model: int = 64
    hidden: int = 172  # SwiGLU width ~ (8/3) d_model, as Llama (keeps the MLP's size near a 4x GELU MLP)
    rope_base: float = 10000.0
    init: str = "mitchell"


class Llama(nn.Module):
    """Llama-style decoder: no position embedding (rotary in attention), RMSNorm, SwiGLU, untied head.

    Keyword options (for the audit presets; the defaults are the tasks' Llama): ``naming``; ``n_kv_head``
    (grouped-query attention, see :class:`Attention`); ``tie_head`` (head is tok_emb, as Llama 3.2);
    ``norm_eps`` of every RMSNorm (Llama 3: 1e-5).
    """

    def __init__(self, config: LlamaConfig, *, naming: Naming = LLAMA_NAMES, n_kv_head: int | None = None,
                 tie_head: bool = False, norm_eps: float = 1e-6):
        super().__init__()
        _check_init(config.init)
        if config.d_model % config.n_head or (config.d_model // config.n_head) % 2:
            raise ValueError(f"d_model {config.d_model} / n_head {config.n_head} must give an even head size")
        self.config, self.naming = config, naming
        body = naming.add_body(self)
        body.add_module(naming.tok_emb, nn.Embedding(config.vocab_size, config.d_model))
        body.add_module(naming.blocks, nn.ModuleList(
            LlamaBlock(config.d_model, config.n_head, config.hidden, n_kv_head=n_kv_head, norm_eps=norm_eps,
                       naming=naming) for _ in range(config.n_layer)))
        body.add_module(naming.norm_f, RMSNorm(config.d_model, eps=norm_eps))
        self.add_module(naming.head, nn.Linear(config.d_model, config.vocab_size, bias=False))
        if tie_head:  # as GPT's: the one tensor is named tok_emb.weight
            naming.part(self, "head").weight = naming.part(self, "tok_emb").weight
        cos, sin = rope_tables(config.block_size, config.d_model // config.n_head, config.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        if config.init == "mitchell":
            self._init_weights()

    def _init_weights(self) -> None:
        _mitchell_init(self, self.config.n_layer, self.naming.residual())

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) -> logits (B, T, vocab)."""
        if idx.shape[1] > self.config.block_size:
            raise ValueError(f"sequence length {idx.shape[1]} exceeds block_size {self.config.block_size}")
        tok_emb, blocks, norm_f, head = (self.naming.part(self, r) for r in ("tok_emb", "blocks", "norm_f", "head"))
        x = tok_emb(idx)  # (B, T, C)
        for block in blocks:
            x = block(x, (self.rope_cos, self.rope_sin))
        return head(norm_f(x))


# ---------------------------------------------------------------------------------------------------------
# Linear LM (the paper's two-layer model)


@dataclass
class LinearLMConfig:
    vocab_size: int = 512
    d_model: int = 64
    init: str = "mitchell"


class LinearLM(nn.Module):
    """logits = head(tok_emb(x)): an embedding table (vocab, C) and an untied head (vocab, C), nothing between."""

    def __init__(self, config: LinearLMConfig):
        super().__init__()
        _check_init(config.init)
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.init == "mitchell":
            self._init_weights()

    def _init_weights(self) -> None:
        _mitchell_init(self, n_layer=1)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.tok_emb(idx))  # (B, T, vocab)


# ---------------------------------------------------------------------------------------------------------
# Vision transformer


@dataclass
class ViTConfig:
    image_size: int = 28
    channels: int = 1
    patch_size: int = 7  # 28x28 -> 4x4 = 16 patches
    n_classes: int = 10
    n_layer: int = 2
    n_head: int = 2
    d_model: int = 64
    mlp_ratio: int = 4
    init: str = "mitchell"


class ViT(nn.Module):
    """ViT (Dosovitskiy et al. 2021): linear patch embedding, class token, learned positions, GPT blocks
    without the causal mask, final LayerNorm, linear classifier on the class token."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        _check_init(config.init)
        if config.image_size % config.patch_size:
            raise ValueError(f"image_size {config.image_size} is not a multiple of patch_size {config.patch_size}")
        self.config = config
        n_patches = (config.image_size // config.patch_size) ** 2
        self.patch_emb = nn.Linear(config.channels * config.patch_size ** 2, config.d_model)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.d_model))
        self.pos_emb = nn.Parameter(torch.zeros(1, n_patches + 1, config.d_model))
        self.blocks = nn.ModuleList(Block(config.d_model, config.n_head, config.mlp_ratio, causal=False)
                                    for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.d_model, bias=False)
        self.head = nn.Linear(config.d_model, config.n_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # The class token and positions are plain Parameters: N(0, 0.02) under either init (torch has no default).
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.pos_emb, std=0.02)
        if self.config.init == "mitchell":
            _mitchell_init(self, self.config.n_layer)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, channels, H, W) -> logits (B, n_classes)."""
        p = self.config.patch_size
        B = images.shape[0]
        patches = F.unfold(images, kernel_size=p, stride=p).transpose(1, 2)  # (B, T, channels*p*p)
        x = self.patch_emb(patches)  # (B, T, C)
        x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1) + self.pos_emb  # (B, T+1, C)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x[:, 0]))


# ---------------------------------------------------------------------------------------------------------
# Small ResNet (He et al. 2016) with BatchNorm; init "kaiming" (default) or "torch"


@dataclass
class ResNetConfig:
    channels: tuple[int, ...] = (16, 32)  # width of each stage; every stage after the first halves H and W
    blocks: tuple[int, ...] = (1, 1)  # residual blocks per stage
    in_channels: int = 1
    n_classes: int = 10
    init: str = "kaiming"  # or "torch"; see ResNet._init_weights


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential()
            self.shortcut.add_module("conv", nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False))
            self.shortcut.add_module("bn", nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class ResNet(nn.Module):
    """stem (conv3x3 + BN + ReLU) -> stages of BasicBlocks -> global average pool -> fc."""

    def __init__(self, config: ResNetConfig):
        super().__init__()
        if config.init not in ("kaiming", "torch"):
            raise ValueError(f"unknown init {config.init!r} for a ResNet; use 'kaiming' or 'torch'")
        if len(config.channels) != len(config.blocks) or not config.channels:
            raise ValueError(f"channels {config.channels} and blocks {config.blocks} need the same, non-zero length")
        self.config = config
        c0 = config.channels[0]
        self.stem = nn.Sequential()
        self.stem.add_module("conv", nn.Conv2d(config.in_channels, c0, 3, padding=1, bias=False))
        self.stem.add_module("bn", nn.BatchNorm2d(c0))
        self.stem.add_module("relu", nn.ReLU())
        stages, c_in = [], c0
        for i, (c, n) in enumerate(zip(config.channels, config.blocks)):
            stages.append(nn.Sequential(*(BasicBlock(c_in if j == 0 else c, c, 2 if (i > 0 and j == 0) else 1)
                                          for j in range(n))))
            c_in = c
        self.layers = nn.ModuleList(stages)
        self.fc = nn.Linear(c_in, config.n_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # "kaiming": He-normal convs (fan_out, ReLU gain) as torchvision's ResNet; BatchNorm stays (1, 0).
        if self.config.init == "kaiming":
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stem(images)
        for stage in self.layers:
            x = stage(x)
        return self.fc(x.mean(dim=(2, 3)))  # (B, n_classes)


# ---------------------------------------------------------------------------------------------------------
# Digits MLP (fastest tests)


@dataclass
class MLPConfig:
    in_features: int = 64  # 8x8 digits
    hidden: int = 64
    n_classes: int = 10
    init: str = "torch"


class DigitsMLP(nn.Module):
    """flatten -> fc1 -> ReLU -> fc2."""

    def __init__(self, config: MLPConfig):
        super().__init__()
        _check_init(config.init)
        self.config = config
        self.fc1 = nn.Linear(config.in_features, config.hidden)
        self.fc2 = nn.Linear(config.hidden, config.n_classes)
        if config.init == "mitchell":
            self._init_weights()

    def _init_weights(self) -> None:
        _mitchell_init(self, n_layer=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(images.flatten(1))))
