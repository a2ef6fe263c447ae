"""Models: parameter names (a contract with the rules engine), tying, init, masking, shapes."""
from __future__ import annotations

import math

import pytest
import torch

from slimbench.layers import layer_type
from slimbench.tasks import models as m


def _names(model):
    return [n for n, _ in model.named_parameters()]


def _block_names(i, norm1="ln1", norm2="ln2", mlp=("up", "down")):
    return [f"blocks.{i}.{norm1}.weight", *(f"blocks.{i}.attn.{p}.weight" for p in "qkvo"),
            f"blocks.{i}.{norm2}.weight", *(f"blocks.{i}.mlp.{p}.weight" for p in mlp)]


def test_gpt_names_with_tied_and_untied_head():
    gpt = m.GPT(m.GPTConfig(n_layer=2))
    assert _names(gpt) == ["tok_emb.weight", "pos_emb.weight", *_block_names(0), *_block_names(1), "ln_f.weight"]
    assert gpt.head.weight is gpt.tok_emb.weight
    assert all(mod.bias is None for mod in gpt.modules() if isinstance(mod, (torch.nn.Linear, torch.nn.LayerNorm)))
    untied = m.GPT(m.GPTConfig(n_layer=2, tie_head=False))
    assert _names(untied)[-1] == "head.weight" and untied.head.weight is not untied.tok_emb.weight
    assert m.count_params(untied) - m.count_params(gpt) == 96 * 64


def test_llama_linear_lm_vit_cnn_digits_names():
    llama = m.Llama(m.LlamaConfig(n_layer=1))
    assert _names(llama) == ["tok_emb.weight", *_block_names(0, "norm1", "norm2", ("gate", "up", "down")),
                             "norm_f.weight", "head.weight"]
    assert _names(m.LinearLM(m.LinearLMConfig(vocab_size=300))) == ["tok_emb.weight", "head.weight"]
    vit = _names(m.ViT(m.ViTConfig(n_layer=1)))
    assert set(vit) == {"cls_token", "pos_emb", "patch_emb.weight", "patch_emb.bias", *_block_names(0),
                        "ln_f.weight", "head.weight", "head.bias"}
    cnn = _names(m.ResNet(m.ResNetConfig(channels=(4, 8), blocks=(2, 1))))
    for name in ["stem.conv.weight", "stem.bn.weight", "layers.0.0.conv1.weight", "layers.0.0.bn1.weight",
                 "layers.0.1.conv2.weight", "layers.0.1.bn2.bias", "layers.1.0.shortcut.conv.weight",
                 "layers.1.0.shortcut.bn.weight", "fc.weight", "fc.bias"]:
        assert name in cnn
    assert _names(m.DigitsMLP(m.MLPConfig())) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]


def test_layer_types_recognised_from_names():
    gpt = dict(m.GPT(m.GPTConfig(n_layer=1, tie_head=False)).named_parameters())
    expect = {"tok_emb.weight": "embedding", "pos_emb.weight": "pos_embedding", "blocks.0.attn.q.weight": "query",
              "blocks.0.attn.k.weight": "key", "blocks.0.attn.v.weight": "value",
              "blocks.0.attn.o.weight": "attn_out", "blocks.0.mlp.up.weight": "mlp_up",
              "blocks.0.mlp.down.weight": "mlp_down", "blocks.0.ln1.weight": "norm", "head.weight": "head"}
    assert {n: layer_type(n, gpt[n].shape) for n in expect} == expect
    llama = dict(m.Llama(m.LlamaConfig(n_layer=1)).named_parameters())
    assert layer_type("blocks.0.mlp.gate.weight", llama["blocks.0.mlp.gate.weight"].shape) == "mlp_gate"
    assert layer_type("blocks.0.norm1.weight", llama["blocks.0.norm1.weight"].shape) == "norm"


def test_mitchell_init_scales_residual_projections():
    torch.manual_seed(0)
    gpt = m.GPT(m.GPTConfig(n_layer=4, d_model=128, n_head=4))
    p = dict(gpt.named_parameters())
    assert abs(p["blocks.0.attn.q.weight"].std().item() - 0.02) < 0.002
    target = 0.02 / math.sqrt(2 * 4)
    for name in ("blocks.3.attn.o.weight", "blocks.2.mlp.down.weight"):
        assert abs(p[name].std().item() - target) / target < 0.1
    torch.manual_seed(0)
    plain = dict(m.GPT(m.GPTConfig(n_layer=4, d_model=128, n_head=4, init="torch")).named_parameters())
    assert abs(plain["tok_emb.weight"].std().item() - 1.0) < 0.05  # nn.Embedding default N(0, 1)
    with pytest.raises(ValueError, match="unknown init"):
        m.GPT(m.GPTConfig(init="xavier"))


@pytest.mark.parametrize("make", [lambda: m.GPT(m.GPTConfig(n_layer=1)), lambda: m.Llama(m.LlamaConfig(n_layer=1))],
                         ids=["gpt", "llama"])
def test_decoders_are_causal(make):
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randint(0, 96, (1, 16))
    y = x.clone()
    y[0, 10:] = (y[0, 10:] + 1) % 96
    with torch.no_grad():
        a, b = model(x), model(y)
    assert a.shape == (1, 16, 96)
    assert torch.allclose(a[:, :10], b[:, :10]) and not torch.allclose(a[:, 10:], b[:, 10:])
    with pytest.raises(ValueError, match="exceeds block_size"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_vit_attends_to_every_patch_and_cnn_shapes():
    torch.manual_seed(0)
    vit = m.ViT(m.ViTConfig(n_layer=1)).eval()
    x = torch.randn(2, 1, 28, 28)
    y = x.clone()
    y[:, :, -7:, -7:] += 1.0  # only the last patch changes
    with torch.no_grad():
        assert vit(x).shape == (2, 10) and not torch.allclose(vit(x), vit(y))
    cnn = m.ResNet(m.ResNetConfig(channels=(4, 8, 8), blocks=(1, 1, 1)))
    assert cnn(x).shape == (2, 10)
    with pytest.raises(ValueError, match="same, non-zero length"):
        m.ResNet(m.ResNetConfig(channels=(4, 8), blocks=(1,)))
    with pytest.raises(ValueError, match="multiple of patch_size"):
        m.ViT(m.ViTConfig(patch_size=5))
