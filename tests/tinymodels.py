"""Tiny models with real layer names, shared by the tests (imported by conftest and test modules)."""
from __future__ import annotations

import torch


class TinyGPT(torch.nn.Module):
    """Two-block attention-shaped parameter set with real layer names (no forward needed for most tests).

    Not a tasks' GPT (:class:`slimbench.tasks.models.GPT`) with a tiny config, on purpose: that GPT always
    has a learned ``pos_emb.weight`` and bias-free LayerNorms, where this has no position embedding and
    LayerNorm biases, and its forward is not attention (``tanh(q) * k + v``). Tests assert this exact
    parameter set (``test_snr_tracker.py``'s ``MATRICES`` fails with the tasks' GPT: it gains
    ``pos_emb.weight``) and values trained from this forward, so swapping it would change asserted values.
    """

    def __init__(self, vocab: int = 11, d: int = 8) -> None:
        super().__init__()
        self.tok_emb = torch.nn.Embedding(vocab, d)
        self.blocks = torch.nn.ModuleList()
        for _ in range(2):
            blk = torch.nn.Module()
            blk.ln1 = torch.nn.LayerNorm(d)
            blk.attn = torch.nn.Module()
            for n in "qkvo":
                setattr(blk.attn, n, torch.nn.Linear(d, d, bias=False))
            blk.mlp = torch.nn.Module()
            blk.mlp.up = torch.nn.Linear(d, 4 * d, bias=False)
            blk.mlp.down = torch.nn.Linear(4 * d, d, bias=False)
            self.blocks.append(blk)
        self.ln_f = torch.nn.LayerNorm(d)
        self.head = torch.nn.Linear(d, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok_emb(idx)
        for blk in self.blocks:
            h = blk.ln1(x)
            x = x + blk.attn.o(torch.tanh(blk.attn.q(h)) * blk.attn.k(h) + blk.attn.v(h))
            x = x + blk.mlp.down(torch.relu(blk.mlp.up(x)))
        return self.head(self.ln_f(x))


def lm_loss(model: torch.nn.Module, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, 11, (3, 5), generator=g)
    logits = model(idx)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), idx.roll(1, 1).reshape(-1))


def tiny_convnet() -> torch.nn.Module:
    """A conv stem and a classifier: the paper gives no conv rule, so coverage must say so."""
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(8, 10))


def tiny_encoder() -> torch.nn.Module:
    """torch's own TransformerEncoderLayer: nn.MultiheadAttention's fused in_proj_weight (Q|K|V)."""
    return torch.nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32)
