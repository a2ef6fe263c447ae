"""The optimizer registry: every spec builds, steps and learns on a tiny model; flags are honest; a missing
third-party package is reported, never a crash."""
from __future__ import annotations

import importlib
import re

import pytest
import torch
from torch import nn

from slimbench import registry
from slimbench.memory.ledger import second_moment_keys
from slimbench.tasks.presets import build_model
from slimbench.registry import (
    REGISTRY,
    SHARED_ERROR_INPUTS,
    OptimizerUnavailable,
    adam_mini_shape,
    available,
    build_optimizer,
    generated_error_inputs,
)

SPECS = list(REGISTRY.values())
IDS = [s.name for s in SPECS]
ERROR_CASES = [(s, e) for s in SPECS for e in s.error_inputs]


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, 256, (4, 17), generator=g)
    return idx[:, :-1], idx[:, 1:]


def _train(spec, steps: int = 8, **kw) -> list[float]:
    torch.manual_seed(0)
    model = build_model("gpt2-tiny", "cpu")
    opt = build_optimizer(spec.name, model, lr=spec.sensible_lr, **kw)
    x, y = _batch()
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = model(x, y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_builds_steps_and_loss_goes_down(spec):
    losses = _train(spec)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0], f"{spec.name}: {losses}"


@pytest.mark.parametrize("spec", [s for s in SPECS if s.foreach], ids=[s.name for s in SPECS if s.foreach])
@pytest.mark.parametrize("foreach", [False, True])
def test_foreach_flag_is_accepted(spec, foreach):
    losses = _train(spec, steps=2, foreach=foreach)
    assert all(torch.isfinite(torch.tensor(losses)))


# SlimAdam's fused path is torch.compile (a one-off compile of seconds or more); its own tests cover it.
_FUSED = [s for s in SPECS if s.fused and s.name != "slimadam"]


@pytest.mark.parametrize("spec", _FUSED, ids=[s.name for s in _FUSED])
def test_fused_flag_is_accepted(spec):
    losses = _train(spec, steps=2, fused=True)
    assert all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.parametrize("spec", [s for s in SPECS if s.closure], ids=[s.name for s in SPECS if s.closure])
def test_closure(spec):
    model = build_model("gpt2-tiny", "cpu")
    opt = build_optimizer(spec.name, model, lr=spec.sensible_lr)
    x, y = _batch()

    def closure():
        opt.zero_grad()
        loss = model(x, y)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss is not None and torch.isfinite(loss)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_specs_never_set_implementation_flags(spec):
    opt = build_optimizer(spec.name, build_model("gpt2-tiny", "meta"))
    for flag in ("foreach", "fused"):
        assert opt.defaults.get(flag) in (None, False), f"{spec.name} sets {flag}"


def test_refuses_flags_and_rules_it_does_not_support():
    model = build_model("gpt2-tiny", "meta")
    with pytest.raises(ValueError, match="'adam-mini' does not support foreach=True"):
        build_optimizer("adam-mini", model, foreach=True)
    with pytest.raises(ValueError, match="'adalayer' does not support fused=True"):
        build_optimizer("adalayer", model, fused=True)
    with pytest.raises(ValueError, match="'adamw' takes no rules"):
        build_optimizer("adamw", model, rules="paper")
    with pytest.raises(ValueError, match="unknown optimizer 'adamx'; known: adamw"):
        build_optimizer("adamx", model)
    with pytest.raises(ValueError, match="'lion'.*unexpected keyword"):
        build_optimizer("lion", model, nonsense=1)
    build_optimizer("adam-mini", model, foreach=False)  # asking for the default is fine


def test_slimadam_defaults_to_paper_rules_and_takes_given_rules():
    model = build_model("gpt2-tiny", "meta")
    opt = build_optimizer("slimadam", model)
    a = opt.assignments["transformer.h.0.attn.q_proj.weight"]
    assert a.rule == "paper:query" and a.label == "fan_in"
    opt = build_optimizer("slimadam", model, rules={"transformer.h.0.attn.q_proj.weight": "fan_out"})
    assert opt.assignments["transformer.h.0.attn.q_proj.weight"].label == "fan_out"
    assert opt.assignments["transformer.h.0.attn.k_proj.weight"].dims == ()


def test_adam_mini_shape_from_config_weights_and_overrides():
    assert adam_mini_shape(build_model("gpt2-small", "meta"))[:3] == (768, 12, None)
    assert adam_mini_shape(build_model("llama-3.2-1b", "meta"))[:3] == (2048, 32, 8)

    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.n_head = 4
            self.q_proj = nn.Linear(32, 32)

    model = nn.Sequential(Attn())
    dim, heads, _, source = adam_mini_shape(model)
    assert (dim, heads, source) == (32, 4, "query weight shape")
    assert adam_mini_shape(model, dim=64, n_heads=8)[:2] == (64, 8)


def test_adam_mini_is_silent_and_partitions_by_head(capsys):
    model = build_model("llama-tiny", "cpu")
    opt = build_optimizer("adam-mini", model)
    x, y = _batch()
    model(x, y).backward()
    opt.step()
    assert capsys.readouterr().out == ""
    state = opt.state[model.model.layers[0].self_attn.q_proj.weight]
    assert state["vmean"].shape == (4, 1)  # n_heads=4 from the config: one V per head
    state = opt.state[model.model.layers[0].self_attn.k_proj.weight]
    assert state["vmean"].shape == (2, 1)  # grouped-query attention: n_kv_heads=2


def test_galore_projects_2d_weights_to_rank():
    model = build_model("gpt2-tiny", "cpu")
    opt = build_optimizer("galore", model, rank=8)
    ranked = [g for g in opt.param_groups if "rank" in g]
    assert len(ranked) == 1 and ranked[0]["rank"] == 8
    assert not any(p is model.transformer.wte.weight for p in ranked[0]["params"])  # embeddings keep full Adam
    x, y = _batch()
    model(x, y).backward()
    opt.step()
    st = opt.state[model.transformer.h[0].attn.q_proj.weight]
    assert st["exp_avg"].shape == (64, 8)
    assert opt.state[model.transformer.wte.weight]["exp_avg"].shape == (256, 64)


def _hide(monkeypatch, module: str) -> None:
    real = importlib.import_module

    def fake(name, *a, **k):
        if name == module:
            raise ImportError(f"No module named {module!r}")
        return real(name, *a, **k)

    monkeypatch.setattr(registry.importlib, "import_module", fake)


def test_missing_package_is_reported_not_a_crash(monkeypatch):
    _hide(monkeypatch, "adam_mini")
    with pytest.raises(OptimizerUnavailable, match="'adam-mini' unavailable: package 'adam_mini' not importable"):
        build_optimizer("adam-mini", build_model("gpt2-tiny", "meta"))
    status = {a.name: a for a in available()}
    assert not status["adam-mini"].ok and "adam_mini" in status["adam-mini"].reason
    assert status["adamw"].ok and status["lion"].ok


def test_broken_package_is_reported(monkeypatch):
    real = importlib.import_module

    def broken(name, *a, **k):
        if name == "pytorch_optimizer":
            raise RuntimeError("CUDA kernels failed to load")
        return real(name, *a, **k)

    monkeypatch.setattr(registry.importlib, "import_module", broken)
    with pytest.raises(OptimizerUnavailable, match="broken on import"):
        build_optimizer("lion", build_model("gpt2-tiny", "meta"))


def test_adam_mini_steps_on_a_vit_with_3d_position_table():
    """A (1, n, d) position table must not be mapped into Adam-mini's per-neuron (matrix-only) sets."""
    model = torch.nn.Module()
    model.pos_emb = torch.nn.Parameter(torch.randn(1, 5, 8))
    model.blocks = torch.nn.ModuleList([torch.nn.Module()])
    model.blocks[0].attn = torch.nn.Module()
    model.blocks[0].attn.q = torch.nn.Linear(8, 8, bias=False)
    opt = build_optimizer("adam-mini", model, lr=1e-2, dim=8, n_heads=2)
    (model.pos_emb.sum() + model.blocks[0].attn.q.weight.square().sum()).backward()
    before = model.pos_emb.detach().clone()
    opt.step()
    assert not torch.equal(before, model.pos_emb)


@pytest.mark.parametrize("name", sorted(REGISTRY), ids=sorted(REGISTRY))
@pytest.mark.parametrize("kwargs, match", [
    ({"lr": -1e-3}, "Invalid learning rate: -0.001"),
    ({"lr": float("nan")}, "Invalid learning rate: nan"),
    ({"weight_decay": -0.1}, "Invalid weight_decay value: -0.1"),
    ({"betas": (0.9, 1.0)}, "Invalid beta parameter at index 1"),
])
def test_bad_hyperparameters_are_one_clear_error_for_every_optimizer(name, kwargs, match):
    """Every registry entry, torch or third-party, rejects bad shared hyperparameters the same way."""
    model = nn.Linear(4, 3)
    with pytest.raises(ValueError, match=re.escape(f"optimizer '{name}': {match}")):
        build_optimizer(name, model, **{"lr": 1e-3, **kwargs})


@pytest.mark.parametrize("spec, error", ERROR_CASES, ids=[f"{s.name}:{e.desc}" for s, e in ERROR_CASES])
def test_declared_error_inputs_raise_their_error(spec, error, tiny_gpt):
    """Each spec's error inputs fail at construction with the declared type and message, as torch's
    ``ErrorOptimizerInput`` cases do; a bad value must never reach training."""
    try:
        with pytest.raises(error.error_type, match=error.match):
            build_optimizer(spec.name, tiny_gpt, **{"lr": 1e-3, **error.kwargs})
    except OptimizerUnavailable as e:  # only optimizer-specific checks get this far; shared ones fail earlier
        pytest.skip(f"{spec.name} unavailable: {e.reason}")


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_every_spec_declares_the_shared_error_inputs(spec):
    """A new spec cannot skip the shared cases (lr < 0 first among them); descs name distinct test ids.
    The shared cases are generated (``OptimizerSpec.error_inputs``), never copied into a spec by hand."""
    negative_lr = SHARED_ERROR_INPUTS[0]
    assert negative_lr.kwargs == {"lr": -1e-3} and negative_lr in spec.error_inputs
    missing = [e.desc for e in SHARED_ERROR_INPUTS if e not in spec.error_inputs]
    assert not missing, f"{spec.name} lacks shared error inputs {missing}"
    descs = [e.desc for e in spec.error_inputs]
    assert len(descs) == len(set(descs)), f"{spec.name}: duplicate error-input descs"
    copied = [e.desc for e in spec.own_error_inputs if e in generated_error_inputs(spec)]
    assert not copied, f"{spec.name} copies generated error inputs {copied} into its own"


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_error_inputs_follow_the_capability_flags(spec):
    """Each flag the optimizer lacks (or a pair it has) brings the case that proves build_optimizer refuses it."""
    descs = {e.desc for e in spec.error_inputs}
    expected = {"foreach-refused": not spec.foreach, "fused-refused": not spec.fused,
                "fused-and-foreach": spec.foreach and spec.fused, "rules-refused": not spec.uses_rules,
                "weight-decay-refused": not spec.weight_decay, "negative-eps": spec.scalar_eps,
                "nan-eps": spec.scalar_eps}
    assert {d for d in expected if d in descs} == {d for d, wanted in expected.items() if wanted}


@pytest.mark.parametrize("spec", [s for s in SPECS if s.weight_decay], ids=[s.name for s in SPECS if s.weight_decay])
def test_weight_decay_flag_is_honest(spec):
    """An optimizer flagged with weight decay takes weight_decay > 0 (those without refuse it: error inputs)."""
    try:
        build_optimizer(spec.name, build_model("gpt2-tiny", "meta"), weight_decay=0.1)
    except OptimizerUnavailable as e:
        pytest.skip(f"{spec.name} unavailable: {e.reason}")


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_ledger_reads_the_second_moment_keys_the_spec_declares(spec):
    """The ledger identifies V by the optimizer's class; the spec declares both, and they must agree with
    what the factory builds (a spec naming the wrong class would silently fall back to the default keys)."""
    try:
        opt = build_optimizer(spec.name, build_model("gpt2-tiny", "meta"), lr=spec.sensible_lr)
    except OptimizerUnavailable as e:
        pytest.skip(f"{spec.name} unavailable: {e.reason}")
    assert second_moment_keys(opt) == (spec.second_moment_keys, spec.state_class)
    same_class = {s.second_moment_keys for s in SPECS if s.state_class == spec.state_class}
    assert same_class == {spec.second_moment_keys}, f"specs building {spec.state_class} disagree on V's keys"


def test_galore_rank_defaults_to_128_and_is_a_keyword():
    """The default rank is unchanged; another rank comes through build_optimizer's keywords."""
    model = build_model("gpt2-tiny", "meta")
    ranks = [g["rank"] for g in build_optimizer("galore", model).param_groups if "rank" in g]
    assert ranks == [128]
    ranks = [g["rank"] for g in build_optimizer("galore", model, rank=16).param_groups if "rank" in g]
    assert ranks == [16]
