"""Proof that SlimAdam is right: fp64 property tests against AdamW, AdaLayer and explicit references.

Every case builds random named tensors (1-D..4-D), random hyperparameters and a random number of
steps, feeds the same gradients to two optimizers and compares the parameters after every step.
"""
from __future__ import annotations

import io
import itertools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from slimbench import AdaLayer, SlimAdam

DT = torch.float64

shapes = st.lists(st.integers(1, 4), min_size=1, max_size=4).map(tuple)
hypers = st.fixed_dictionaries({
    "lr": st.floats(1e-4, 0.3),
    "betas": st.tuples(st.floats(0.0, 0.99), st.floats(0.5, 0.9999)),
    "eps": st.sampled_from([1e-8, 1e-6, 1e-3]),
    "weight_decay": st.sampled_from([0.0, 0.01, 0.3]),
})


@st.composite
def cases(draw: st.DrawFn) -> dict:
    """Random tensors with a random subset of dims each, hyperparameters, steps and a seed."""
    shp = draw(st.lists(shapes, min_size=1, max_size=4))
    dims = [tuple(sorted(draw(st.sets(st.integers(0, len(s) - 1))))) for s in shp]
    return {"shapes": shp, "dims": dims, "hp": draw(hypers), "steps": draw(st.integers(1, 6)),
            "seed": draw(st.integers(0, 2**16)), "two_groups": draw(st.booleans())}


def make_params(case: dict) -> list[tuple[str, torch.nn.Parameter]]:
    g = torch.Generator().manual_seed(case["seed"])
    return [(f"p{i}", torch.nn.Parameter(torch.randn(s, generator=g, dtype=DT))) for i, s in enumerate(case["shapes"])]


def grads_for(case: dict, step: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(case["seed"] * 1000 + step + 1)
    # Varying scales per entry, so means along K differ from the entries they replace.
    return [torch.randn(s, generator=g, dtype=DT) * torch.rand(s, generator=g, dtype=DT) * 3 for s in case["shapes"]]


def groups(named: list, case: dict, hp: dict) -> list[dict]:
    """One group, or two groups with different lr / weight decay."""
    if not case["two_groups"] or len(named) < 2:
        return [{"params": named}]
    return [{"params": named[:1]}, {"params": named[1:], "lr": hp["lr"] / 3, "weight_decay": 0.05}]


def run(case: dict, make_opt, steps: int | None = None) -> tuple[list[torch.Tensor], torch.optim.Optimizer]:
    named = make_params(case)
    opt = make_opt(named)
    for t in range(steps if steps is not None else case["steps"]):
        for (_, p), gr in zip(named, grads_for(case, t)):
            p.grad = gr.clone()
        opt.step()
    return [p.detach().clone() for _, p in named], opt


def rules_of(case: dict, dims: list | None = None) -> dict:
    return {f"p{i}": list(d) for i, d in enumerate(dims if dims is not None else case["dims"])}


def slim(case: dict, foreach: bool, dims: list | None = None):
    hp = case["hp"]
    # decay_vectors: the references (torch.optim.AdamW, AdaLayer) decay every tensor
    return lambda named: SlimAdam(groups(named, case, hp), **hp, rules=rules_of(case, dims), foreach=foreach,
                                  decay_vectors=True)


def assert_same(a: list[torch.Tensor], b: list[torch.Tensor], exact: bool = False) -> None:
    for x, y in zip(a, b):
        if exact:
            assert torch.equal(x, y), (x - y).abs().max()
        else:
            torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("foreach", [False, True])
@given(case=cases())
def test_no_compression_is_adamw(case: dict, foreach: bool) -> None:
    hp = case["hp"]
    ref, _ = run(case, lambda named: torch.optim.AdamW(groups(named, case, hp), **hp, foreach=foreach))
    got, _ = run(case, lambda named: SlimAdam(groups(named, case, hp), **hp, rules=None, foreach=foreach,
                                              decay_vectors=True))
    # The for-loop path repeats AdamW's arithmetic operation for operation: bit-identical.
    assert_same(ref, got, exact=not foreach)


@pytest.mark.parametrize("foreach", [False, True])
@given(case=cases())
def test_all_dims_is_adalayer(case: dict, foreach: bool) -> None:
    hp = case["hp"]
    all_dims = [tuple(range(len(s))) for s in case["shapes"]]
    ref, _ = run(case, lambda named: AdaLayer(groups(named, case, hp), **hp, foreach=foreach))
    got, _ = run(case, slim(case, foreach, all_dims))
    assert_same(ref, got)


@given(case=cases())
def test_foreach_equals_for_loop(case: dict) -> None:
    a, _ = run(case, slim(case, foreach=False))
    b, _ = run(case, slim(case, foreach=True))
    assert_same(a, b)


def per_row_reference(w0: torch.Tensor, grads: list[torch.Tensor], lr: float, b1: float, b2: float, eps: float,
                      wd: float) -> torch.Tensor:
    """SlimAdam with K=(1,) on an (out, in) weight, written out row by row with Python floats for V."""
    w = w0.clone()
    m = torch.zeros_like(w)
    v = [0.0] * w.shape[0]
    for t, g in enumerate(grads, start=1):
        w = w * (1 - lr * wd)
        m = b1 * m + (1 - b1) * g
        for r in range(w.shape[0]):
            v[r] = b2 * v[r] + (1 - b2) * float((g[r] ** 2).mean())
            denom = (v[r] / (1 - b2**t)) ** 0.5 + eps
            w[r] = w[r] - lr * (m[r] / (1 - b1**t)) / denom
    return w


@given(hp=hypers, rows=st.integers(1, 5), cols=st.integers(1, 5), steps=st.integers(1, 5), seed=st.integers(0, 999))
def test_fan_in_matches_explicit_per_row_reference(hp: dict, rows: int, cols: int, steps: int, seed: int) -> None:
    case = {"shapes": [(rows, cols)], "dims": [(1,)], "hp": hp, "steps": steps, "seed": seed, "two_groups": False}
    got, opt = run(case, slim(case, foreach=False))
    w0 = make_params(case)[0][1].detach()
    ref = per_row_reference(w0, [grads_for(case, t)[0] for t in range(steps)], hp["lr"], *hp["betas"], hp["eps"],
                            hp["weight_decay"])
    torch.testing.assert_close(got[0], ref, rtol=1e-10, atol=1e-12)
    assert opt.state[opt.param_groups[0]["params"][0]]["exp_avg_sq"].shape == (rows, 1)


@given(case=cases(), foreach=st.booleans())
def test_dims_order_does_not_matter(case: dict, foreach: bool) -> None:
    a, _ = run(case, slim(case, foreach))
    b, _ = run(case, slim(case, foreach, [tuple(reversed(d)) for d in case["dims"]]))
    assert_same(a, b, exact=True)


@given(case=cases())
def test_state_shapes_are_param_shape_with_k_dims_one(case: dict) -> None:
    _, opt = run(case, slim(case, foreach=True), steps=1)
    params = [p for g in opt.param_groups for p in g["params"]]
    for p, shape, k in zip(params, case["shapes"], case["dims"]):
        st_ = opt.state[p]
        assert st_["exp_avg"].shape == p.shape
        assert st_["exp_avg_sq"].shape == tuple(1 if i in k else s for i, s in enumerate(shape))


@pytest.mark.parametrize("foreach", [False, True])
@given(case=cases())
def test_save_load_mid_run_is_bit_identical(case: dict, foreach: bool) -> None:
    case = {**case, "steps": max(case["steps"], 2)}
    ref, _ = run(case, slim(case, foreach))

    named = make_params(case)
    opt = slim(case, foreach)(named)
    half = case["steps"] // 2
    for t in range(half):
        for (_, p), gr in zip(named, grads_for(case, t)):
            p.grad = gr.clone()
        opt.step()
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "params": [p.detach().clone() for _, p in named]}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)

    named2 = make_params(case)
    with torch.no_grad():
        for (_, p), w in zip(named2, saved["params"]):
            p.copy_(w)
    opt2 = slim(case, foreach)(named2)
    opt2.load_state_dict(saved["opt"])
    for t in range(half, case["steps"]):
        for (_, p), gr in zip(named2, grads_for(case, t)):
            p.grad = gr.clone()
        opt2.step()
    assert_same(ref, [p.detach() for _, p in named2], exact=True)


def test_dims_enumeration_covers_every_subset_of_a_4d_tensor() -> None:
    """Deterministic sweep of all 16 dim subsets of a 4-D tensor, both paths, against a direct formula."""
    shape = (2, 3, 2, 3)
    for r in range(5):
        for k in itertools.combinations(range(4), r):
            case = {"shapes": [shape], "dims": [k], "hp": {"lr": 0.1, "betas": (0.9, 0.99), "eps": 1e-8,
                                                              "weight_decay": 0.0}, "steps": 1, "seed": 3,
                    "two_groups": False}
            got, _ = run(case, slim(case, foreach=True))
            w0 = make_params(case)[0][1].detach()
            g = grads_for(case, 0)[0]
            v = (g * g).mean(dim=k, keepdim=True) if k else g * g
            # After one step: M/(1-b1) = g and V/(1-b2) = mean_K(g^2).
            ref = w0 - 0.1 * g / (v.sqrt() + 1e-8)
            torch.testing.assert_close(got[0], ref, rtol=1e-10, atol=1e-12)
