"""Layouts by meaning and fused weights by block (issue 11): SlimAdam on the models people train."""
from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

from slimbench import SlimAdam
from slimbench.layouts import Block, fused_blocks, model_layouts, name_layouts
from slimbench.rules import load_rules, resolve

IMPLS = [dict(foreach=False), dict(foreach=True), dict(fused=True)]


def _train(opt: torch.optim.Optimizer, params: list[torch.Tensor], grads_fn, steps: int = 5) -> None:
    for t in range(steps):
        for p, g in zip(params, grads_fn(t)):
            p.grad = g
        opt.step()


def _grads(shapes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    series = [[torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes] for _ in range(6)]
    return lambda t: series[t]


@pytest.mark.parametrize("impl", IMPLS, ids=["loop", "foreach", "fused"])
def test_fused_qkv_equals_separate_blocks(impl):
    """A (3d, d) Q|K|V weight under block rules is the same optimizer as three separate (d, d) weights."""
    d, hp = 6, dict(lr=0.05, betas=(0.9, 0.99), weight_decay=0.1)
    torch.manual_seed(0)
    w = torch.randn(3 * d, d, dtype=torch.float64)
    fused = nn.Parameter(w.clone())
    sep = [nn.Parameter(w[i * d:(i + 1) * d].clone()) for i in range(3)]
    opt_f = SlimAdam([("h.0.attn.qkv.weight", fused)], rules="paper", **hp, **impl)
    opt_s = SlimAdam(list(zip(["h.0.attn.q_proj.weight", "h.0.attn.k_proj.weight", "h.0.attn.v_proj.weight"], sep)),
                     rules="paper", **hp, **impl)
    assert [b.label for b in opt_f.assignments["h.0.attn.qkv.weight"].blocks] == ["fan_in", "fan_in", "fan_out"]
    gs = _grads([(3 * d, d)])
    _train(opt_f, [fused], gs)
    _train(opt_s, sep, lambda t: list(gs(t)[0].split(d)))
    got, want = fused.detach(), torch.cat([p.detach() for p in sep])
    if impl.get("foreach") is False:
        assert torch.equal(got, want)  # the for-loop path: bit for bit
    else:
        torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)
    v = opt_f.state[fused]["exp_avg_sq"]
    assert v.shape == (d + d + d,)
    assert opt_f.state[fused]["step"].item() == 5


def test_conv1d_layout_equals_linear_transposed():
    """A weight stored (in, out) with fan_out read from its layout trains like the (out, in) weight."""
    d_in, d_out = 5, 7
    torch.manual_seed(1)
    w = torch.randn(d_out, d_in, dtype=torch.float64)
    lin = nn.Linear(d_in, d_out, bias=False).double()
    lin.weight.data.copy_(w)

    class Conv1D(nn.Module):  # transformers' layout: weight (in, out), duck-typed by class name and ``nf``
        def __init__(self) -> None:
            super().__init__()
            self.nf = d_out
            self.weight = nn.Parameter(w.T.clone().contiguous())

    class M(nn.Module):
        def __init__(self, layer: nn.Module) -> None:
            super().__init__()
            self.mlp = nn.Module()
            self.mlp.c_fc = layer

    a, b = M(Conv1D()), M(lin)
    oa, ob = SlimAdam(a, lr=0.05), SlimAdam(b, lr=0.05)
    assert oa.assignments["mlp.c_fc.weight"].v_shape == (d_in, 1)  # fan_out of (in, out) is dim 1
    assert ob.assignments["mlp.c_fc.weight"].v_shape == (1, d_in)
    gs = _grads([(d_out, d_in)], seed=2)
    _train(oa, [a.mlp.c_fc.weight], lambda t: [gs(t)[0].T.contiguous()])
    _train(ob, [b.mlp.c_fc.weight], gs)
    torch.testing.assert_close(a.mlp.c_fc.weight.detach().T, b.mlp.c_fc.weight.detach(), rtol=1e-14, atol=1e-14)


def test_interleaved_heads_equal_separate_weights():
    """GPT-NeoX / Bloom query_key_value rows repeat [q | k | v] per head: V's fan_out spans all heads."""
    h, hd, d = 3, 2, 6

    class Cfg:
        num_attention_heads, hidden_size, model_type = h, d, "gpt_neox"

    blocks, why = fused_blocks("layers.0.attention.query_key_value.weight", (3 * h * hd, d), 0, Cfg())
    assert not why and [b.role for b in blocks] == ["query", "key", "value"]
    torch.manual_seed(3)
    w = torch.randn(3 * h * hd, d, dtype=torch.float64)

    class NeoX(nn.Module):
        config = Cfg()

        def __init__(self) -> None:
            super().__init__()
            self.attention = nn.Module()
            self.attention.query_key_value = nn.Linear(d, 3 * h * hd, bias=False).double()
            self.attention.query_key_value.weight.data.copy_(w)

    model = NeoX()
    fused = model.attention.query_key_value.weight
    rows = w.view(h, 3, hd, d)
    sep = [nn.Parameter(rows[:, r].reshape(h * hd, d).clone()) for r in range(3)]
    opt_f = SlimAdam(model, lr=0.05, foreach=False)
    assert [b.label for b in opt_f.assignments["attention.query_key_value.weight"].blocks] == [
        "fan_in", "fan_in", "fan_out"]
    opt_s = SlimAdam(list(zip(["q_proj.weight", "k_proj.weight", "v_proj.weight"], sep)), lr=0.05, foreach=False)
    gs = _grads([(3 * h * hd, d)], seed=4)
    _train(opt_f, [fused], gs)
    _train(opt_s, sep, lambda t: [gs(t)[0].view(h, 3, hd, d)[:, r].reshape(h * hd, d) for r in range(3)])
    got = fused.detach().view(h, 3, hd, d)
    for r in range(3):
        assert torch.equal(got[:, r].reshape(h * hd, d), sep[r].detach())


def test_block_state_round_trips_and_continues(tmp_path):
    d = 4
    torch.manual_seed(5)
    w0 = torch.randn(3 * d, d, dtype=torch.float64)
    gs = _grads([(3 * d, d)], seed=6)
    full = nn.Parameter(w0.clone())
    opt = SlimAdam([("attn.qkv.weight", full)], lr=0.05)
    _train(opt, [full], gs, steps=6)
    half = nn.Parameter(w0.clone())
    o1 = SlimAdam([("attn.qkv.weight", half)], lr=0.05)
    _train(o1, [half], gs, steps=3)
    torch.save(o1.state_dict(), tmp_path / "opt.pt")
    o2 = SlimAdam([("attn.qkv.weight", half)], lr=0.05, fused=True)
    o2.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))
    _train(o2, [half], lambda t: gs(t + 3), steps=3)
    torch.testing.assert_close(half.detach(), full.detach(), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("impl", IMPLS, ids=["loop", "foreach", "fused"])
def test_checkpoint_that_does_not_fit_is_refused_naming_the_parameter(impl):
    small = nn.Parameter(torch.randn(4, 8))
    o = SlimAdam([("w", small)], rules={"w": "fan_in"})
    small.grad = torch.randn(4, 8)
    o.step()
    big = nn.Parameter(torch.randn(64, 64))
    o2 = SlimAdam([("w", big)], rules={"w": "fan_in"}, **impl)
    with pytest.raises(ValueError, match=r"checkpoint does not fit 'w': its exp_avg is \[4, 8\]"):
        o2.load_state_dict(o.state_dict())
    o3 = SlimAdam([("w", nn.Parameter(torch.randn(4, 8)))], rules={"w": "fan_out"}, **impl)
    with pytest.raises(ValueError, match=r"checkpoint was made under other rules: 'w' has K=\[1\]"):
        o3.load_state_dict(o.state_dict())


def test_rules_layer_and_match_through_wrapper_prefixes(tiny_gpt):
    compiled_names = [(f"_orig_mod.module.{n}", p.shape) for n, p in tiny_gpt.named_parameters()]
    got = resolve(compiled_names, ["paper", {"blocks.0.attn.q.weight": "none"}])
    assert got["_orig_mod.module.blocks.0.attn.q.weight"].dims == ()
    assert got["_orig_mod.module.blocks.1.attn.q.weight"].label == "fan_in"  # paper underneath


def test_paper_reference_rules_file_loads(tmp_path, tiny_gpt):
    names = [n for n, p in tiny_gpt.named_parameters() if p.dim() >= 2]
    doc = {names[0]: [1], names[1]: None}
    path = tmp_path / "paper_rules.json"
    path.write_text(json.dumps(doc))
    rs = load_rules(path)
    got = resolve([(n, p.shape) for n, p in tiny_gpt.named_parameters()], rs)
    assert got[names[0]].dims == (1,) and got[names[1]].dims == ()
    path.write_text(json.dumps({names[0]: [0.7]}))
    with pytest.raises(ValueError, match="list of ints"):
        load_rules(path)


def test_defaults_say_what_they_do():
    p = nn.Parameter(torch.randn(4, 4))
    with pytest.warns(UserWarning, match="bare parameters"):
        SlimAdam([p])
    with pytest.warns(UserWarning, match="compresses none of its 1 weights"):
        SlimAdam([("w", nn.Parameter(torch.randn(4, 4)))], rules=None)
    with pytest.warns(UserWarning, match="pass the model itself"):
        SlimAdam([("h.0.mlp.c_fc.weight", nn.Parameter(torch.randn(4, 16)))])


def test_weight_decay_only_on_matrices_by_default():
    w, b = nn.Parameter(torch.ones(3, 3)), nn.Parameter(torch.ones(3))
    opt = SlimAdam([("fc.weight", w), ("fc.bias", b)], lr=0.1, weight_decay=0.5, rules=None)
    w.grad, b.grad = torch.zeros(3, 3), torch.zeros(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt.step()
    assert torch.allclose(w, torch.full((3, 3), 0.95)) and torch.equal(b.detach(), torch.ones(3))
    opt2 = SlimAdam([("fc.bias", b)], lr=0.1, weight_decay=0.5, rules=None, decay_vectors=True)
    opt2.step()
    assert torch.allclose(b, torch.full((3,), 0.95))


def test_bad_parameters_are_refused():
    p = nn.Parameter(torch.randn(3, 3))
    with pytest.raises(ValueError, match="'b' is the same tensor as 'a'"):
        SlimAdam([("a", p), ("b", p)])
    with pytest.raises(ValueError, match="complex"):
        SlimAdam([("z", nn.Parameter(torch.randn(3, 3, dtype=torch.complex64)))])


@pytest.mark.parametrize("impl", IMPLS, ids=["loop", "foreach", "fused"])
def test_zero_size_parameters_are_skipped(impl):
    ps = [nn.Parameter(torch.randn(5, 0)), nn.Parameter(torch.randn(0, 5)), nn.Parameter(torch.randn(3, 3))]
    opt = SlimAdam(list(zip(["a.weight", "b.weight", "c.weight"], ps)),
                   rules={"a.weight": "fan_in", "b.weight": "fan_out", "c.weight": "fan_in"}, **impl)
    for p in ps:
        p.grad = torch.ones_like(p)
    opt.step()
    assert ps[2].detach().ne(0).all() and opt.state[ps[2]]["step"].item() == 1


def test_name_layouts_read_the_conv1d_shape_of_c_attn():
    lay = name_layouts([("h.0.attn.qkv.weight", (8, 24))])["h.0.attn.qkv.weight"]
    assert lay.fan_out == (1,) and [b.role for b in lay.blocks] == ["query", "key", "value"]
    assert Block.from_dict(lay.blocks[2].to_dict()) == lay.blocks[2]


def test_hf_gpt2_paper_rules():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.AutoConfig.for_model("gpt2", n_layer=2, n_embd=64, n_head=4, vocab_size=128, n_positions=32)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    opt = SlimAdam(model, lr=1e-3)
    a = opt.assignments
    assert a["transformer.h.0.mlp.c_proj.weight"].v_shape == (256, 1)
    assert a["transformer.h.0.attn.c_proj.weight"].v_shape == (64, 1)
    assert a["transformer.h.0.mlp.c_fc.weight"].v_shape == (64, 1)
    assert [b.label for b in a["transformer.h.0.attn.c_attn.weight"].blocks] == ["fan_in", "fan_in", "fan_out"]
    x = torch.randint(0, 128, (2, 16))
    model(x, labels=x).loss.backward()
    opt.step()
    assert opt.state[model.transformer.h[0].attn.c_attn.weight]["exp_avg_sq"].shape == (64 * 3,)


def test_snr_rules_train_on_hf_gpt2_by_role_and_block(tmp_path):
    """SNR of a Conv1D weight is read by role, per block of c_attn; the rules apply through the layout."""
    transformers = pytest.importorskip("transformers")
    from slimbench.rules import save_rules
    from slimbench.snr import track_snr
    from slimbench.snr.derive import derive_rules

    cfg = transformers.AutoConfig.for_model("gpt2", n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=16)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with track_snr(model, opt, schedule="every:2") as tracker:
        for _ in range(4):
            x = torch.randint(0, 64, (2, 16))
            model(x, labels=x).loss.backward()
            opt.step()
            opt.zero_grad()
    rec = tracker.record()
    info = {p.name: p for p in rec.params}
    assert info["transformer.h.0.mlp.c_proj.weight"].shape == (32, 128)  # (out, in), stored (in, out)
    assert info["transformer.h.0.mlp.c_proj.weight"].stored_shape == (128, 32)
    assert info["transformer.h.0.attn.c_attn.weight[value]"].layer_type == "value"
    derived = derive_rules(rec, cutoff=0.0)
    path = save_rules(tmp_path / "rules.json", derived.entries(), cutoff=0.0)
    slim = SlimAdam(model, rules=str(path))
    a = slim.assignments["transformer.h.0.mlp.c_proj.weight"]
    k = next(r for r in derived.rows if r.name == "transformer.h.0.mlp.c_proj.weight").dims
    assert a.label == {(0,): "fan_out", (1,): "fan_in", (0, 1): "both"}[k]
    assert len(slim.assignments["transformer.h.0.attn.c_attn.weight"].blocks) == 3


def test_layer_type_rules_transfer_by_role_between_layouts(tmp_path):
    """Rules derived on GPT-2 (Conv1D, (in, out)) apply by role to Llama (nn.Linear, (out, in))."""
    transformers = pytest.importorskip("transformers")
    from slimbench.rules import save_rules

    path = save_rules(tmp_path / "types.json", [{"match": "mlp_down", "dims": "fan_out"},
                                                {"match": "query", "dims": "fan_in"}], by="layer_type")
    gpt2 = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(
        "gpt2", n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=16))
    llama = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(
        "llama", num_hidden_layers=1, hidden_size=32, intermediate_size=64, num_attention_heads=2,
        num_key_value_heads=2, vocab_size=64))
    g = SlimAdam(gpt2, rules=str(path)).assignments
    m = SlimAdam(llama, rules=str(path)).assignments
    assert g["transformer.h.0.mlp.c_proj.weight"].v_shape == (128, 1)  # (in, out): fan_out is dim 1
    assert m["model.layers.0.mlp.down_proj.weight"].v_shape == (1, 64)  # (out, in): fan_out is dim 0
    assert [b.v_shape for b in g["transformer.h.0.attn.c_attn.weight"].blocks][0] == (1, 32)  # Q block, fan_in
    assert m["model.layers.0.self_attn.q_proj.weight"].v_shape == (32, 1)


@pytest.mark.parametrize("model_type, overrides, weight, sizes", [
    ("phi3", dict(num_hidden_layers=1, hidden_size=32, intermediate_size=48, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2),
     "model.layers.0.self_attn.qkv_proj.weight",
     [("query", 32), ("key", 16), ("value", 16)]),
    ("falcon", dict(num_hidden_layers=1, hidden_size=32, num_attention_heads=4, vocab_size=64,
                    new_decoder_architecture=True, num_kv_heads=2), "transformer.h.0.self_attention.query_key_value.weight",
     [("query", 2 * 2 * 8), ("key", 2 * 8), ("value", 2 * 8)]),
    ("falcon", dict(num_hidden_layers=1, hidden_size=32, num_attention_heads=4, vocab_size=64, multi_query=True,
                    new_decoder_architecture=False), "transformer.h.0.self_attention.query_key_value.weight",
     [("query", 32), ("key", 8), ("value", 8)]),
])
def test_grouped_query_fused_weights_split_by_the_models_layout(model_type, overrides, weight, sizes):
    """Phi-3's qkv_proj and Falcon's query_key_value: block sizes come from the config (grouped-query)."""
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(model_type, **overrides))
    opt = SlimAdam(model, lr=1e-3)
    blocks = opt.assignments[weight].blocks
    assert [(b.block.role, b.block.numel // b.block.shape[-1]) for b in blocks] == sizes
    assert [b.label for b in blocks] == ["fan_in", "fan_in", "fan_out"]
    x = torch.randint(0, 64, (2, 8))
    model(x, labels=x).loss.backward()
    opt.step()
    p = dict(model.named_parameters())[weight]
    assert opt.state[p]["exp_avg_sq"].shape == (sum(n for _, n in sizes[:2]) + 32,)


def test_wrapped_model_keeps_layouts_config_and_rules():
    """torch.compile's OptimizedModule: names gain `_orig_mod.`, layouts and the config are still found."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.AutoConfig.for_model("gpt_neox", num_hidden_layers=1, hidden_size=32, num_attention_heads=4,
                                            intermediate_size=64, vocab_size=64)
    model = torch.compile(transformers.AutoModelForCausalLM.from_config(cfg))
    a = SlimAdam(model, lr=1e-3).assignments
    qkv = a["_orig_mod.gpt_neox.layers.0.attention.query_key_value.weight"]
    assert [b.block.role for b in qkv.blocks] == ["query", "key", "value"]
    assert a["_orig_mod.gpt_neox.layers.0.mlp.dense_4h_to_h.weight"].label == "fan_out"
