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


# --- one zoo: the options the audit presets use (defaults: the tasks' models, frozen in tests/test_zoo.py) ---

def test_naming_changes_names_only():
    """Under a checkpoint's names, the same seed gives the same tensors in the same order and the same logits."""
    from slimbench.tasks.presets import HF_LLAMA_NAMES, NANOGPT_NAMES

    x = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(0))
    for make, naming, first, block0 in [
            (lambda **kw: m.GPT(m.GPTConfig(n_layer=2), **kw), NANOGPT_NAMES, "transformer.wte.weight",
             "transformer.h.0.attn.q_proj.weight"),
            (lambda **kw: m.Llama(m.LlamaConfig(n_layer=2), **kw), HF_LLAMA_NAMES, "model.embed_tokens.weight",
             "model.layers.0.self_attn.q_proj.weight")]:
        torch.manual_seed(0)
        ours = make()
        torch.manual_seed(0)
        theirs = make(naming=naming)
        a, b = list(ours.named_parameters()), list(theirs.named_parameters())
        assert [p.shape for _, p in a] == [p.shape for _, p in b] and b[0][0] == first and block0 in dict(b)
        assert all(torch.equal(p, q) for (_, p), (_, q) in zip(a, b))
        assert torch.equal(ours(x), theirs(x))
        assert [n for n, _ in theirs.named_parameters()] != [n for n, _ in a]


def test_grouped_query_attention_is_attention_with_shared_kv_heads():
    """n_kv_head=2 of 4 heads == full attention whose k/v weights repeat each kv head for its 2 query heads."""
    torch.manual_seed(0)
    gqa = m.Attention(32, 4, causal=True, n_kv_head=2).double()
    assert gqa.k.weight.shape == gqa.v.weight.shape == (16, 32)
    full = m.Attention(32, 4, causal=True).double()
    with torch.no_grad():
        full.q.weight.copy_(gqa.q.weight)
        full.o.weight.copy_(gqa.o.weight)
        for name in "kv":  # rows of kv head j (8 each) serve query heads 2j and 2j+1
            getattr(full, name).weight.copy_(getattr(gqa, name).weight.view(2, 8, 32).repeat_interleave(2, 0)
                                             .reshape(32, 32))
    x = torch.randn(2, 7, 32, dtype=torch.float64)
    assert torch.allclose(gqa(x), full(x), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="n_kv_head 3 must be >= 1 and divide n_head 4"):
        m.Attention(32, 4, causal=True, n_kv_head=3)
    with pytest.raises(ValueError, match="fused_qkv with grouped-query attention"):
        m.Attention(32, 4, causal=True, n_kv_head=2, fused_qkv=True)


def test_fused_qkv_is_the_three_projections_stacked():
    torch.manual_seed(0)
    names = m.Naming(qkv="c_attn")
    fused = m.Attention(32, 4, causal=True, fused_qkv=True, bias=True, naming=names).double()
    split = m.Attention(32, 4, causal=True, bias=True).double()
    assert [n for n, _ in fused.named_parameters()] == ["c_attn.weight", "c_attn.bias", "o.weight", "o.bias"]
    with torch.no_grad():
        for i, proj in enumerate((split.q, split.k, split.v)):
            proj.weight.copy_(fused.c_attn.weight[32 * i:32 * (i + 1)])
            proj.bias.copy_(fused.c_attn.bias[32 * i:32 * (i + 1)])
        split.o.load_state_dict(fused.o.state_dict())
    x = torch.randn(2, 5, 32, dtype=torch.float64)
    assert torch.allclose(fused(x), split(x), rtol=0, atol=1e-12)


def test_bias_gelu_tie_and_eps_options():
    gpt2 = m.GPT(m.GPTConfig(n_layer=1), bias=True, gelu="tanh")
    biases = [n for n, _ in gpt2.named_parameters() if n.endswith("bias")]
    assert biases == ["blocks.0.ln1.bias", *(f"blocks.0.attn.{p}.bias" for p in "qkvo"), "blocks.0.ln2.bias",
                      "blocks.0.mlp.up.bias", "blocks.0.mlp.down.bias", "ln_f.bias"]
    assert gpt2.blocks[0].mlp.gelu == "tanh"
    with pytest.raises(ValueError, match="unknown gelu 'relu'"):
        m.GPT(m.GPTConfig(n_layer=1), gelu="relu")
    tied = m.Llama(m.LlamaConfig(n_layer=1), tie_head=True, norm_eps=1e-5)
    assert tied.head.weight is tied.tok_emb.weight and "head.weight" not in dict(tied.named_parameters())
    assert all(mod.eps == 1e-5 for mod in tied.modules() if isinstance(mod, m.RMSNorm))
    assert m.count_params(m.Llama(m.LlamaConfig(n_layer=1))) - m.count_params(tied) == 96 * 64
    with pytest.raises(ValueError, match="qkv_order must order the letters q, k, v"):
        m.Naming(qkv_order="qqv")


def test_presets_are_the_tasks_models():
    from slimbench.tasks.presets import PRESETS, build_model

    for name in PRESETS:
        model = build_model(name, "meta")
        assert isinstance(model, m.Llama if name.startswith("llama") else m.GPT), name
        assert model.config is PRESETS[name]  # the preset's config, as tools (Adam-mini) read it
    model = build_model("llama-tiny", "cpu")
    idx, targets = torch.randint(0, 256, (2, 9)), torch.randint(0, 256, (2, 9))
    logits = m.Llama.forward(model, idx)
    assert torch.equal(model(idx, targets), torch.nn.functional.cross_entropy(logits.reshape(-1, 256),
                                                                              targets.reshape(-1)))
