"""SlimAdam and AdaLayer behave as real torch.optim optimizers, and fail clearly on bad input."""
from __future__ import annotations

import io
import math

import pytest
import torch

from tinymodels import lm_loss
from slimbench import AdaLayer, SlimAdam

OPTIMIZERS = {
    "slimadam-paper": lambda named, **kw: SlimAdam(named, rules="paper", **kw),
    "slimadam-none": lambda named, **kw: SlimAdam(named, **kw),
    "adalayer": lambda named, **kw: AdaLayer(named, **kw),
    "adalayer+ln+tl": lambda named, **kw: AdaLayer(named, full_adam=("norm", "head"), **kw),
}


@pytest.fixture(params=sorted(OPTIMIZERS), ids=sorted(OPTIMIZERS))
def make_opt(request):
    return OPTIMIZERS[request.param]


@pytest.mark.parametrize("foreach", [False, True])
def test_trains_tiny_model(tiny_gpt, make_opt, foreach):
    opt = make_opt(tiny_gpt.named_parameters(), lr=3e-2, foreach=foreach)
    first = lm_loss(tiny_gpt, 0).item()
    for _ in range(40):
        opt.zero_grad()
        loss = lm_loss(tiny_gpt, 0)
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_closure_returns_loss(tiny_gpt, make_opt):
    opt = make_opt(tiny_gpt.named_parameters(), lr=1e-2)

    def closure():
        opt.zero_grad()
        loss = lm_loss(tiny_gpt, 1)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert torch.is_tensor(loss) and loss.ndim == 0


def test_lr_scheduler_changes_the_step(tiny_gpt, make_opt):
    opt = make_opt(tiny_gpt.named_parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.0 if t >= 1 else 1.0)
    lm_loss(tiny_gpt, 0).backward()
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == 0.0
    before = [p.detach().clone() for p in tiny_gpt.parameters()]
    opt.step()  # lr = 0 and no weight decay: nothing moves
    assert all(torch.equal(a, b) for a, b in zip(before, tiny_gpt.parameters()))


def test_params_without_grad_are_skipped(tiny_gpt, make_opt):
    opt = make_opt(tiny_gpt.named_parameters(), lr=1e-2)
    tiny_gpt.head.weight.requires_grad_(False)
    frozen = tiny_gpt.head.weight.detach().clone()
    lm_loss(tiny_gpt, 0).backward()
    opt.step()
    assert torch.equal(frozen, tiny_gpt.head.weight)
    assert tiny_gpt.head.weight not in opt.state


def test_state_dict_roundtrip_weights_only(tiny_gpt, make_opt):
    opt = make_opt(tiny_gpt.named_parameters(), lr=1e-2)
    lm_loss(tiny_gpt, 0).backward()
    opt.step()
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    opt2 = make_opt(tiny_gpt.named_parameters(), lr=1e-2)
    opt2.load_state_dict(sd)
    for p in tiny_gpt.parameters():
        for key, val in opt.state[p].items():
            assert torch.equal(val, opt2.state[p][key])


def test_param_groups_and_add_param_group(tiny_gpt):
    named = list(tiny_gpt.named_parameters())
    opt = SlimAdam([{"params": named[:3]}, {"params": named[3:6], "lr": 0.5}], lr=1e-3, rules={"type:query": "fan_in"})
    opt.add_param_group({"params": named[6:], "weight_decay": 0.1})
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 0.5, 1e-3]
    assert opt.assignments["blocks.1.attn.q.weight"].dims == (1,)
    lm_loss(tiny_gpt, 0).backward()
    opt.step()
    assert all(p in opt.state for p in tiny_gpt.parameters())


def test_group_dims_override(tiny_gpt):
    named = dict(tiny_gpt.named_parameters())
    opt = SlimAdam([{"params": [("blocks.0.mlp.up.weight", named["blocks.0.mlp.up.weight"]),
                                ("blocks.0.ln1.weight", named["blocks.0.ln1.weight"])], "dims": "both"}])
    assert opt.assignments["blocks.0.mlp.up.weight"].dims == (0, 1)
    assert opt.assignments["blocks.0.ln1.weight"].dims == ()  # vectors stay uncompressed


@pytest.mark.parametrize("kwargs, match", [
    ({"lr": -1e-3}, "Invalid learning rate: -0.001"),
    ({"eps": -1.0}, "Invalid epsilon value"),
    ({"betas": (1.0, 0.9)}, "Invalid beta parameter at index 0"),
    ({"betas": (0.9, -0.1)}, "Invalid beta parameter at index 1"),
    ({"weight_decay": -0.1}, "Invalid weight_decay value"),
])
@pytest.mark.parametrize("cls", [SlimAdam, AdaLayer])
def test_invalid_hyperparameters(tiny_gpt, cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(tiny_gpt.named_parameters(), **kwargs)


@pytest.mark.parametrize("cls", [SlimAdam, AdaLayer])
def test_empty_params(cls):
    with pytest.raises(ValueError, match="empty parameter list"):
        cls([])


def test_rules_need_names(tiny_gpt):
    with pytest.raises(ValueError, match="named_parameters"):
        SlimAdam(tiny_gpt.parameters(), rules="paper")
    with pytest.raises(ValueError, match="named_parameters"):
        AdaLayer(tiny_gpt.parameters(), full_adam=("norm",))


def test_unknown_full_adam_layer_type(tiny_gpt):
    with pytest.raises(ValueError, match="unknown layer type"):
        AdaLayer(tiny_gpt.named_parameters(), full_adam=("lmhead",))


def test_adalayer_ln_tl_keeps_full_adam_for_norms_and_head(tiny_gpt):
    opt = AdaLayer(tiny_gpt.named_parameters(), full_adam=("norm", "head"))
    lm_loss(tiny_gpt, 0).backward()
    opt.step()
    assert opt.state[tiny_gpt.head.weight]["exp_avg_sq"].shape == tiny_gpt.head.weight.shape
    assert opt.state[tiny_gpt.ln_f.weight]["exp_avg_sq"].shape == tiny_gpt.ln_f.weight.shape
    assert opt.state[tiny_gpt.blocks[0].attn.q.weight]["exp_avg_sq"].shape == ()


@pytest.mark.parametrize("foreach", [False, True])
def test_nan_gradient_poisons_the_shared_slice(foreach):
    """Documented behaviour: like AdamW, non-finite grads are not skipped; with K=(1,) one NaN poisons its row."""
    w = torch.nn.Parameter(torch.ones(3, 4))
    opt = SlimAdam([("w", w)], lr=0.1, rules={"w": "fan_in"}, foreach=foreach)
    g = torch.ones(3, 4)
    g[1, 2] = math.nan
    w.grad = g
    opt.step()
    assert torch.isnan(w[1]).all()  # the whole row shares the NaN second moment
    assert torch.isfinite(w[0]).all() and torch.isfinite(w[2]).all()


def test_sparse_gradients_rejected():
    emb = torch.nn.Embedding(5, 3, sparse=True)
    opt = SlimAdam(emb.named_parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


def test_paper_rules_assignments(tiny_gpt):
    opt = SlimAdam(tiny_gpt.named_parameters(), rules="paper")
    got = {n: a.label for n, a in opt.assignments.items()}
    assert got["blocks.0.attn.q.weight"] == "fan_in"
    assert got["blocks.0.attn.k.weight"] == "fan_in"
    assert got["blocks.0.attn.v.weight"] == "fan_out"
    assert got["blocks.0.attn.o.weight"] == "fan_out"
    assert got["blocks.0.mlp.up.weight"] == "fan_out"
    assert got["blocks.0.mlp.down.weight"] == "fan_out"
    assert opt.assignments["tok_emb.weight"].dims == (1,)  # embedding dim, never the token dim
    assert opt.assignments["head.weight"].dims == (1,)
    assert got["blocks.0.ln1.weight"] == "none"
