"""Memory safety of the fused paths and the numerical contract for huge and non-finite gradients.

The fused paths index p, G, M and V by the parameter's shape, so state that does not fit must be a
ValueError before anything runs (issue 12), whichever way it arrives: a checkpoint, or the functional API.
The contract (slimbench/optim/_fused.py, "Huge and non-finite gradients") is checked on every path.
"""
from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap

import pytest
import torch

from slimbench import SlimAdam
from slimbench.optim import _checks, _fused
from slimbench.optim._dispatch import slimadam
from slimbench.optim._functional import AdamHyper, reduced_shape

HP = AdamHyper(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1)
PATHS = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "native": {"fused": True},
         "compile": {"fused": True, "fused_backend": "compile"}}
FUSED = {k: v for k, v in PATHS.items() if v.get("fused")}


def state(shape: tuple[int, ...], k: tuple[int, ...], dtype: torch.dtype = torch.float32) -> list[list[torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [[torch.randn(shape, generator=g, dtype=dtype)], [torch.randn(shape, generator=g, dtype=dtype)],
            [torch.zeros(shape, dtype=dtype)], [torch.zeros(reduced_shape(shape, k), dtype=dtype)],
            [torch.tensor(0.0)]]


# ---------------------------------------------------------------------------------------------------------
# state that does not fit its parameter


def test_a_small_checkpoint_loaded_into_a_big_weight_is_a_value_error_on_every_path() -> None:
    """The issue's reproducer: a (4, 8) checkpoint into a (64, 64) weight (SIGBUS on the native path
    before). SlimAdam.load_state_dict refuses it; the fused entry point refuses it on its own too."""
    small = torch.nn.Parameter(torch.randn(4, 8))
    opt = SlimAdam([("w", small)], lr=0.01, rules={"w": [1]}, fused=True)
    small.grad = torch.randn(4, 8)
    opt.step()
    ckpt = opt.state_dict()
    for impl in PATHS.values():
        big = torch.nn.Parameter(torch.randn(64, 64))
        target = SlimAdam([("w", big)], lr=0.01, rules={"w": [1]}, **impl)
        with pytest.raises(ValueError, match="does not fit"):
            target.load_state_dict(ckpt)
    # Straight into the fused kernels, as the functional API allows: refused before anything is touched.
    p, g = torch.randn(64, 64), torch.randn(64, 64)
    st = ckpt["state"][0]
    for impl in FUSED.values():
        before = p.clone()
        with pytest.raises(ValueError, match=r"state does not fit the parameter: exp_avg is \(4, 8\)"):
            slimadam([p], [g], [st["exp_avg"]], [st["exp_avg_sq"]], [st["step"].clone()], [(1,)], hp=HP, **impl)
        assert torch.equal(p, before)


BAD = {  # what is wrong -> (edit of the five lists and K, message)
    "exp_avg_sq of the wrong reduced shape": (lambda s, k: (s[3].__setitem__(0, torch.zeros(1, 5)), k)[1],
                                              r"exp_avg_sq is \(1, 5\) float32 on cpu, a parameter \(4, 5\) float32 "
                                              r"on cpu with K=\(1,\) needs \(4, 1\)"),
    "exp_avg_sq of another dtype": (lambda s, k: (s[3].__setitem__(0, torch.zeros(4, 1, dtype=torch.float16)), k)[1],
                                    "exp_avg_sq is .* float16"),
    "exp_avg of another dtype": (lambda s, k: (s[2].__setitem__(0, torch.zeros(4, 5, dtype=torch.float64)), k)[1],
                                 "state does not fit the parameter: exp_avg is .* float64"),
    "gradient of another shape": (lambda s, k: (s[1].__setitem__(0, torch.zeros(5, 4)), k)[1],
                                  r"the gradient does not fit the parameter: gradient \(5, 4\)"),
    "gradient of another dtype": (lambda s, k: (s[1].__setitem__(0, torch.zeros(4, 5, dtype=torch.bfloat16)), k)[1],
                                  "gradient .* bfloat16"),
    "K out of range": (lambda s, k: (2,), r"K=\(2,\) is not a set of distinct dims of a 2-D parameter"),
    "K repeated": (lambda s, k: (1, 1), r"K=\(1, 1\) is not a set of distinct dims"),
    "K not a tuple of ints": (lambda s, k: [1], "K must be a tuple of ints"),
    "a step that is not one element": (lambda s, k: (s[4].__setitem__(0, torch.zeros(2)), k)[1],
                                       "one-element float tensor"),
    "a complex parameter": (lambda s, k: ([lst.__setitem__(0, lst[0].to(torch.complex64)) for lst in s[:4]], k)[1],
                            "real floating-point tensors only"),
}


@pytest.mark.parametrize("backend", ["auto", "compile"])
@pytest.mark.parametrize("what", sorted(BAD))
def test_state_that_does_not_fit_is_a_one_line_value_error(what: str, backend: str) -> None:
    edit, message = BAD[what]
    s = state((4, 5), (1,))
    k = edit(s, (1,))
    before = [t.clone() for t in (s[0][0], s[2][0], s[4][0])]
    with pytest.raises(ValueError, match=message) as err:
        _fused._fused_slimadam(*s, [k], HP, backend)
    assert "\n" not in str(err.value) and "tensor 0 of 1 in this call" in str(err.value)
    assert all(torch.equal(a, b) for a, b in zip(before, (s[0][0], s[2][0], s[4][0])))  # nothing updated


def test_a_check_is_cached_but_a_new_state_is_checked_again() -> None:
    """Steady state: a repeated signature is not re-checked. A replaced state tensor of another size is."""
    s = state((6, 4), (0,))
    _fused._fused_slimadam(*s, [(0,)], HP)
    calls = []
    real = _checks.check_state
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_checks, "check_state", lambda *a: calls.append(1) or real(*a))
        _fused._fused_slimadam(*s, [(0,)], HP)
        assert calls == []
        s[3][0] = torch.zeros(1, 2)  # e.g. loaded from elsewhere
        with pytest.raises(ValueError, match="exp_avg_sq is"):
            _fused._fused_slimadam(*s, [(0,)], HP)
        assert calls == [1]


def test_the_same_parameter_twice_is_refused() -> None:
    """It would be updated twice, by two kernel threads at once (two different results in 30 runs)."""
    p, g = torch.randn(8, 8), torch.randn(8, 8)
    lists = [[p, p], [g, g], [torch.zeros(8, 8), torch.zeros(8, 8)], [torch.zeros(8, 1), torch.zeros(8, 1)],
             [torch.tensor(0.0), torch.tensor(0.0)]]
    with pytest.raises(ValueError, match="tensors 0 and 1 of this call share memory"):
        _fused._fused_slimadam(*lists, [(1,), (1,)], HP)
    flat = torch.randn(80)  # overlapping contiguous views
    lists[0] = [flat[:64].view(8, 8), flat[16:].view(8, 8)]
    with pytest.raises(ValueError, match="share memory"):
        _fused._fused_slimadam(*lists, [(1,), (1,)], HP)


def test_disjoint_blocks_of_one_weight_are_not_sharing() -> None:
    """Column blocks of a fused weight (non-contiguous views, interleaved but disjoint) are accepted and
    updated as separate tensors would be."""
    w, gw = torch.randn(6, 12), torch.randn(6, 12)
    cols = [slice(0, 4), slice(4, 8), slice(8, 12)]
    ref = [[w[:, c].clone() for c in cols], [gw[:, c].clone() for c in cols], [torch.zeros(6, 4) for _ in cols],
           [torch.zeros(6, 1) for _ in cols], [torch.tensor(0.0) for _ in cols]]
    m = torch.zeros(6, 12)
    lists = [[w[:, c] for c in cols], [gw[:, c] for c in cols], [m[:, c] for c in cols],
             [torch.zeros(6, 1) for _ in cols], [torch.tensor(0.0) for _ in cols]]
    _fused._fused_slimadam(*lists, [(1,)] * 3, HP)
    slimadam(*ref, [(1,)] * 3, hp=HP)
    for got, want in zip(lists, ref):
        torch.testing.assert_close(got, want)


def test_zero_size_tensors_are_skipped() -> None:
    for shape, k in (((5, 0), (1,)), ((0, 5), (0,))):
        s = state(shape, k)
        other = state((3, 4), (1,))
        lists = [a + b for a, b in zip(s, other)]
        _fused._fused_slimadam(*lists, [k, (1,)], HP)
        assert lists[4][0].item() == 0 and lists[4][1].item() == 1  # the empty one untouched, the other stepped


def test_a_bucket_of_many_tensors_needs_no_stack() -> None:
    """The per-tensor scalars used to be stack arrays: 600k fp64 tensors in one bucket overflowed 8 MiB
    of stack. Under a 1 MiB stack, 70k (1.1 MiB of scalars) did the same; now they are on the heap."""
    code = textwrap.dedent("""
        import torch
        from slimbench.optim._functional import AdamHyper
        from slimbench.optim._fused import _fused_slimadam
        n = 70_000
        ps = list(torch.ones(n, 2, dtype=torch.float64).unbind())
        gs = list(torch.full((n, 2), 0.5, dtype=torch.float64).unbind())
        ms, vs = list(torch.zeros(n, 2, dtype=torch.float64).unbind()), list(torch.zeros(n, 1, dtype=torch.float64).unbind())
        steps = list(torch.zeros(n).unbind())
        _fused_slimadam(ps, gs, ms, vs, steps, [(0,)] * n, AdamHyper(0.1, 0.9, 0.99, 1e-8, 0.0))
        assert all(s.item() == 1 for s in steps[::997]) and abs(ps[-1][0].item() - 0.9) < 1e-6
        print("ok")
    """)
    import resource

    def small_stack() -> None:
        resource.setrlimit(resource.RLIMIT_STACK, (1 << 20, 1 << 20))

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          preexec_fn=small_stack)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


# ---------------------------------------------------------------------------------------------------------
# the numerical contract: huge and non-finite gradients, on every path

SHAPE = (4, 6, 8)
KS = [k for r in range(4) for k in itertools.combinations(range(3), r)]  # all 8 K of a 3-D tensor
SPOT = (1, 2, 3)


def sharing(k: tuple[int, ...]) -> torch.Tensor:
    """The entries that share SPOT's V (its row / column / slab / tensor)."""
    mask = torch.ones(SHAPE, dtype=torch.bool)
    for d in range(3):
        if d not in k:
            idx = [slice(None)] * 3
            keep = torch.zeros(SHAPE[d], dtype=torch.bool)
            keep[SPOT[d]] = True
            mask &= keep.view([-1 if i == d else 1 for i in range(3)])
    return mask


def gradient(case: str, k: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    g = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1), dtype=dtype)
    huge = 3e19 if dtype == torch.float32 else 3e160
    if case == "huge":  # one |G| whose square overflows the dtype
        g[SPOT] = huge
    elif case == "huge-sum":  # squares that fit, a sum over K that does not
        g[sharing(k)] = huge / 2
    else:
        g[SPOT] = {"nan": float("nan"), "+inf": float("inf"), "-inf": float("-inf")}[case]
    return g


def run_all_ks(case: str, impl: dict, dtype: torch.dtype, steps: int = 2) -> list[list[torch.Tensor]]:
    """Every K in one call (one bucket, one compile); step 1 gets the special gradient, later ones finite."""
    g0 = torch.Generator().manual_seed(2)
    ps = [torch.randn(SHAPE, generator=g0, dtype=dtype) for _ in KS]
    ms, vs = [torch.zeros(SHAPE, dtype=dtype) for _ in KS], [torch.zeros(reduced_shape(SHAPE, k), dtype=dtype) for k in KS]
    ss = [torch.tensor(0.0) for _ in KS]
    for t in range(steps):
        gs = [gradient(case, k, dtype) if t == 0 else torch.randn(SHAPE, generator=g0, dtype=dtype) for k in KS]
        slimadam(ps, gs, ms, vs, ss, list(KS), hp=HP, **impl)
    return [ps, ms, vs]


def same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal NaN and inf masks, finite entries within fp rounding."""
    if not (torch.equal(a.isnan(), b.isnan()) and torch.equal(a.isinf(), b.isinf())):
        return False
    ok = a.isfinite()
    return torch.allclose(a[ok], b[ok], rtol=1e-5, atol=1e-6) and torch.equal(a[a.isinf()], b[b.isinf()])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", ["huge", "huge-sum", "nan", "+inf", "-inf"])
def test_huge_and_non_finite_gradients_give_the_same_result_on_every_path(case: str, dtype: torch.dtype) -> None:
    paths = PATHS if dtype == torch.float32 else {k: v for k, v in PATHS.items() if k != "compile"}  # compile: fp32
    got = {name: run_all_ks(case, impl, dtype) for name, impl in paths.items()}
    ref = got.pop("for-loop")
    for name, res in got.items():
        for what, a_list, b_list in zip(("p", "M", "V"), ref, res):
            for k, a, b in zip(KS, a_list, b_list):
                assert same_values(a, b), f"{name} differs from the for-loop: {what} with K={k}, {case} gradient"


@pytest.mark.parametrize("case", ["huge", "+inf", "nan"])
def test_the_contract_itself(case: str) -> None:
    """What every path computes (checked on the for-loop; the test above ties the others to it):
    NaN poisons the entries sharing its V on the same step; a +inf V (an infinite G, or a square past the
    dtype's range, except K = () where ((1-b2) G) G stays finite as in AdamW) freezes them for good."""
    g0 = torch.Generator().manual_seed(2)
    p0 = [torch.randn(SHAPE, generator=g0) for _ in KS]
    for steps in (1, 3):
        ps, _, vs = run_all_ks(case, PATHS["for-loop"], torch.float32, steps=steps)
        decay = (1 - HP.lr * HP.weight_decay) ** steps
        for k, p, v, start in zip(KS, ps, vs, p0):
            share, others = sharing(k), ~sharing(k)
            if case == "nan":
                assert p[share].isnan().all() and p[others].isfinite().all()
                continue
            if case == "huge" and not k:  # AdamW: a finite V, a finite ordinary update
                assert v.isfinite().all() and p.isfinite().all()
                continue
            assert v[tuple(0 if d in k else SPOT[d] for d in range(3))].isinf()
            frozen = share.clone()
            if case == "+inf":
                frozen[SPOT] = False  # its own M is inf: inf / inf
                assert p[SPOT].isnan()
            torch.testing.assert_close(p[frozen], start[frozen] * decay)  # weight decay only
            if others.any():
                assert not torch.allclose(p[others], start[others] * decay)  # the rest still learns
