"""The Triton SlimAdam kernel (slimbench/optim/_triton.py), run by Triton's interpreter on CPU tensors.

TRITON_INTERPRET: Triton decides "interpreted or compiled" when a function is decorated, and
``_triton.kernel()`` decorates its kernel when first used, once per mode; the kernel calls no jit function
of triton.language (whose mode was fixed when triton was imported). So TRITON_INTERPRET need not be set
before triton is imported, and the ``interp`` fixture sets it for this module's CPU tests only (restoring
it afterwards), after importing triton on purpose: other test modules are unaffected, and the CUDA tests
drop it to compile for real. ``test_compiles_for_sm90_without_a_gpu`` runs Triton's real compiler (down to
a cubin for sm_90) on this CPU machine, which type-checks what the interpreter does not.

The interpreter runs each program in Python, so shapes are small and block sizes are shrunk
(``small_blocks``) so that tiny tensors still reach every loop of the kernel (chunked rows, chunked
column blocks). Under the interpreter nothing compiles, so "schedules never recompile" is checked on the
launch's specialisation key (dtype and constexprs, ``_triton.specializations``); the CUDA test counts
Triton's real compile cache.
"""
from __future__ import annotations

import contextlib
import copy
import importlib.util
import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from slimbench import SlimAdam
from slimbench.optim import _fused, _triton
from slimbench.optim._backends import AdamHyper
from slimbench.optim._dispatch import slimadam
from slimbench.optim._functional import reduced_shape

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                  reason="triton not installed (pip install -e '.[gpu]')")

# K kinds the rules produce, with the stored shape they apply to (sizes drawn below).
KINDS = {
    "none": (1, ()), "none2d": (2, ()), "fan_in": (2, (1,)), "fan_out": (2, (0,)), "both": (2, (0, 1)),
    "embed": (2, (1,)), "conv_fan_in": (4, (1, 2, 3)), "conv_fan_out": (4, (0,)), "middle": (3, (1,)),
}


@pytest.fixture(scope="module")
def interp():
    """TRITON_INTERPRET=1 for this module's CPU tests. triton itself is imported first, on purpose, as
    inductor or another test module may already have done in a full run: the kernel must not depend on
    the import order (see the comment on sums in _triton._slimadam_kernel)."""
    if importlib.util.find_spec("triton") is not None:
        import triton  # noqa: F401
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_INTERPRET", "1")
        yield


@contextlib.contextmanager
def small_blocks(on: bool = True):
    """Tiny block sizes, so that dims of 3-9 take the chunked loops; plans are cached per signature, so
    forget them on the way in and out."""
    _fused._checked.clear()
    with pytest.MonkeyPatch.context() as mp:
        if on:
            for name, value in (("TILE", 16), ("BLOCK_E", 8), ("MAX_BLOCK_R", 4), ("MAX_BLOCK_C", 4), ("MIN_BLOCK", 2)):
                mp.setattr(_triton, name, value)
        try:
            yield
        finally:
            _fused._checked.clear()


def make_tensors(specs: list[tuple[tuple[int, ...], tuple[int, ...]]], dtype: torch.dtype, seed: int) -> list[list]:
    """[p, g, m, v, step, K] per spec, with state as after a few steps (V > 0, step 2)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for shape, k in specs:
        r = lambda s: torch.randn(s, generator=gen, dtype=torch.float64)  # noqa: E731
        g = r(shape) * torch.rand(shape, generator=gen, dtype=torch.float64) * 3
        v = torch.rand(reduced_shape(shape, k), generator=gen, dtype=torch.float64) + 0.01
        out.append([r(shape).to(dtype), g.to(dtype), (0.1 * r(shape)).to(dtype), v.to(dtype),
                    torch.tensor(2.0), k])
    return out


def lists(tensors: list[list]) -> list[list]:
    return [list(col) for col in zip(*tensors)]


def clone(tensors: list[list]) -> list[list]:
    return [[x.clone() if isinstance(x, torch.Tensor) else x for x in row] for row in tensors]


def reference(p, g, m, v, step, k, hp: AdamHyper):
    """One step in float64 from the same inputs (the algorithm as written in slimbench.optim._functional)."""
    p, g, m, v = (x.double() for x in (p, g, m, v))
    t = step.item() + 1
    g = -g if hp.maximize else g
    p = p * (1 - hp.lr * hp.weight_decay)
    m = m + (1 - hp.beta1) * (g - m)
    v = hp.beta2 * v + (1 - hp.beta2) * ((g * g).mean(dim=k, keepdim=True) if k else g * g)
    step_size = hp.lr / (1 - hp.beta1**t)
    update = step_size * m / (v.sqrt() / math.sqrt(1 - hp.beta2**t) + hp.eps)
    return p - update, m, v, update.abs() + p.abs()


def ulp(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The spacing of ``dtype`` at |x| (down to its smallest subnormal)."""
    fi = torch.finfo(dtype)
    mag = x.abs().clamp_min(fi.tiny)
    return torch.maximum(fi.eps * torch.exp2(torch.floor(torch.log2(mag))), torch.tensor(fi.tiny * fi.eps,
                                                                                          dtype=x.dtype))


shapes_of = st.sampled_from(sorted(KINDS)).flatmap(
    lambda kind: st.tuples(st.just(KINDS[kind][1]),
                           st.lists(st.integers(0, 9), min_size=KINDS[kind][0], max_size=KINDS[kind][0])))
specs_of = st.lists(shapes_of, min_size=1, max_size=4).map(lambda xs: [(tuple(s), k) for k, s in xs])
hypers = st.builds(AdamHyper, lr=st.floats(1e-4, 0.1), beta1=st.floats(0.0, 0.99), beta2=st.floats(0.5, 0.9999),
                   eps=st.sampled_from([1e-8, 1e-6, 1e-3]), weight_decay=st.sampled_from([0.0, 0.01, 0.3]),
                   maximize=st.booleans())


@needs_triton
@settings(max_examples=25)
@given(specs=specs_of, hp=hypers, steps=st.integers(1, 3), seed=st.integers(0, 2**16), small=st.booleans())
def test_fp32_matches_for_loop(interp, specs, hp, steps, seed, small):
    """Several tensors per launch, every K kind, odd, empty and 1-element dims, weight decay, maximize."""
    got = make_tensors(specs, torch.float32, seed)
    ref = clone(got)
    full = [i for i, row in enumerate(got) if row[0].numel()]  # zero-size tensors: skipped, as SlimAdam does
    with small_blocks(small):
        for t in range(steps):
            gen = torch.Generator().manual_seed(seed + t)
            for a, b in zip(got, ref):
                a[1].copy_(torch.randn(a[1].shape, generator=gen) * 2)
                b[1].copy_(a[1])
            assert _triton.step_bucket(*lists(got), hp) == []  # the kernel took every tensor
            if full:
                slimadam(*lists([ref[i] for i in full]), hp=hp, foreach=False)
    for i, (a, b) in enumerate(zip(got, ref)):
        for x, y in zip(a[:5], b[:5]):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
        assert a[4].item() == (2 + steps if i in full else 2)


@needs_triton
@settings(max_examples=25)
@given(specs=specs_of, hp=hypers, seed=st.integers(0, 2**16), small=st.booleans(),
       dtype=st.sampled_from([torch.bfloat16, torch.float16]))
def test_half_within_one_ulp_of_fp64(interp, specs, hp, seed, small, dtype):
    """bf16 / fp16 storage: each stored value is the fp64 result rounded once, to within one ulp (plus fp32's
    own rounding of the terms, which only matters where they cancel to far below them)."""
    got = make_tensors(specs, dtype, seed)
    refs = [reference(*row, hp) for row in got]
    with small_blocks(small):
        assert _triton.step_bucket(*lists(got), hp) == []
    for (p, _, m, v, step, _), (rp, rm, rv, scale) in zip(got, refs):
        if not p.numel():  # zero-size: skipped (V and the step untouched)
            assert step.item() == 2.0
            continue
        assert step.item() == 3.0
        for out, want, terms in ((p, rp, scale), (m, rm, rm.abs() + 1), (v, rv, rv)):
            slack = 4 * torch.finfo(torch.float32).eps * terms
            err = (out.double() - want).abs()
            assert bool((err <= ulp(want, dtype) + slack).all()), (dtype, out.shape, float(err.max()))


@needs_triton
def test_long_rows_and_columns_default_blocks(interp):
    """The default block sizes' chunked loops: a fan_in row longer than MAX_BLOCK_R, a fan_out gradient
    taller than one column tile, next to a plain AdamW tensor, in one launch."""
    hp = AdamHyper(lr=3e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)
    specs = [((3, 1100), (1,)), ((300, 20), (0,)), ((2, 5, 7), ())]
    got = make_tensors(specs, torch.float32, 0)
    ref = clone(got)
    with small_blocks(False):
        assert _triton.step_bucket(*lists(got), hp) == []
    slimadam(*lists(ref), hp=hp, foreach=False)
    for a, b in zip(got, ref):
        for x, y in zip(a[:4], b[:4]):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(11, 6)
        self.q = torch.nn.Linear(6, 5)
        self.o = torch.nn.Linear(5, 7)
        self.w = torch.nn.Linear(7, 3)
        self.conv = torch.nn.Conv2d(2, 3, 3)
        self.norm = torch.nn.LayerNorm(3)


RULES = {"emb.weight": "embed", "q.weight": "fan_in", "o.weight": "fan_out", "w.weight": "both",
         "conv.weight": "fan_in", "norm.weight": "none"}


def train(model: Net, steps: int, **impl) -> tuple[SlimAdam, list[torch.Tensor]]:
    opt = SlimAdam(model, lr=0.02, betas=(0.9, 0.99), weight_decay=0.1, rules=RULES, **impl)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 / (1 + t))
    gen = torch.Generator().manual_seed(5)
    for _ in range(steps):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=gen).to(p.device, p.dtype)
        opt.step()
        sched.step()
    return opt, [p.detach().cpu() for p in model.parameters()]


@needs_triton
def test_slimadam_fused_backend_triton_every_rule_kind(interp, monkeypatch):
    """Through SlimAdam and the dispatch: the paper's K kinds (embed, fan_in, fan_out, both, conv fan_in,
    none) train as the for-loop does under an lr schedule, in one launch per step, with one specialisation."""
    launches = []
    real = _triton._launch
    monkeypatch.setattr(_triton, "_launch", lambda lists, hp, scratch: launches.append(len(lists[0])) or
                        real(lists, hp, scratch))
    torch.manual_seed(0)
    model = Net()
    twin = copy.deepcopy(model)
    _triton.specializations.clear()
    opt, got = train(model, 1, fused=True, fused_backend="triton")
    seen = set(_triton.specializations)
    opt, got = train(model, 3, fused=True, fused_backend="triton")
    assert _triton.specializations == seen  # lr 0.02, 0.01, 0.0067: data, not a new kernel
    ref_opt, ref = train(twin, 1, foreach=False)
    ref_opt, ref = train(twin, 3, foreach=False)
    # per step, the decayed (>= 2-D: 5) and undecayed (6) tensors are two calls, each one launch
    assert launches == [5, 6] * 4
    for x, y in zip(got, ref):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
    for p in model.parameters():  # the same state layout as every other path
        a, b = opt.state[p], ref_opt.state[dict(zip(model.parameters(), twin.parameters()))[p]]
        assert a["exp_avg_sq"].shape == b["exp_avg_sq"].shape and a["step"] == b["step"]


@needs_triton
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # numpy, inside the interpreter
def test_non_finite_gradients_follow_the_contract(interp):
    """A huge |G| (sum of squares past fp32) and a NaN: the same inf/NaN pattern and values as the for-loop."""
    hp = AdamHyper(lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1)
    specs = [((4, 6), (1,)), ((4, 6), (0,)), ((4, 6), ()), ((4, 6), (0, 1))]
    got = make_tensors(specs, torch.float32, 3)
    for row in got:
        row[1][1, 2] = 3e19  # its row / column / tensor's V is +inf: those entries only decay
        row[1][3, 0] = float("nan")  # NaN poisons its V's entries on the same step
    ref = clone(got)
    assert _triton.step_bucket(*lists(got), hp) == []
    slimadam(*lists(ref), hp=hp, foreach=False)
    for a, b in zip(got, ref):
        for x, y in zip(a[:4], b[:4]):
            assert torch.equal(x.isnan(), y.isnan()) and torch.equal(x.isinf(), y.isinf())
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, equal_nan=True)
    assert got[0][3][1].isinf().all() and got[0][0][3].isnan().all()


@needs_triton
def test_declines_what_it_cannot_take(interp):
    """Non-contiguous gradients, K that is not a range of dims, fp64: left untouched for the next backend."""
    hp = AdamHyper(lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.0)
    got = make_tensors([((3, 4), (1,)), ((2, 3, 4), (0, 2)), ((3, 4), (0,)), ((5,), ())], torch.float32, 1)
    got[2][1] = got[2][1].t().contiguous().t()  # same values, column-major
    got[3] = [x.double() if isinstance(x, torch.Tensor) and i < 4 else x for i, x in enumerate(got[3])]
    before = clone(got)
    assert _triton.step_bucket(*lists(got), hp) == [1, 2, 3]
    assert not torch.equal(got[0][0], before[0][0]) and got[0][4].item() == 3.0
    for a, b in zip(got[1:], before[1:]):
        assert all(torch.equal(x, y) for x, y in zip(a[:5], b[:5]))


@needs_triton
def test_one_launch_per_dtype(interp, monkeypatch):
    """fp32 and bf16 tensors interleaved in one call: two launches, each for all tensors of its dtype."""
    launches = []
    real = _triton._launch
    monkeypatch.setattr(_triton, "_launch", lambda lists, hp, scratch: launches.append(
        (lists[0][0].dtype, len(lists[0]))) or real(lists, hp, scratch))
    hp = AdamHyper(lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1)
    specs = [((3, 4), (1,)), ((4, 3), (0,)), ((5,), ()), ((2, 3, 2, 2), (1, 2, 3))]
    got = [row for spec in specs for dtype in (torch.float32, torch.bfloat16)
           for row in make_tensors([spec], dtype, 6)]
    with small_blocks(False):
        assert _triton.step_bucket(*lists(got), hp) == []
    assert sorted(launches, key=str) == [(torch.bfloat16, 4), (torch.float32, 4)]
    assert all(row[4].item() == 3.0 for row in got)


def nvidia_compiler() -> bool:
    try:
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


@needs_triton
@pytest.mark.skipif(not nvidia_compiler(), reason="Triton's NVIDIA backend is not installed")
@pytest.mark.parametrize("dtype, maximize", [("fp32", False), ("bf16", True), ("fp16", False)])
def test_compiles_for_sm90_without_a_gpu(dtype, maximize, monkeypatch):
    """The interpreter checks no types; Triton's compiler does (e.g. one name with two tile shapes in
    sibling branches). Compile the kernel ahead of time for an H100/H200 (sm_90) down to a cubin: no GPU
    needed, about a second each. That it runs correctly on a GPU is the CUDA tests' job."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    _, _, const = _triton._plan([(7, 3000, 1), (1, 300, 700), (50, 1, 1), (4, 9, 5)], [(1,), (0,), (), (1,)], maximize)
    sig = {"base": f"*{dtype}", "meta": "*i64", "starts": "*i64", "coeffs": "*fp32", "n_tensors": "i32"}
    compiled = triton.compile(ASTSource(fn=_triton.kernel(), signature=sig | {k: "constexpr" for k in const},
                                        constexprs=const),
                              target=GPUTarget("cuda", 90, 32), options=_triton.COMPILE_OPTIONS)
    ptx = compiled.asm["ptx"]
    assert compiled.asm["cubin"] and "div.rn.f32" in ptx and "sqrt.rn.f32" in ptx and "div.full" not in ptx


def test_serial_shapes_are_declined(interp):
    """A trailing K over many entries in a few rows would be a few long serial programs: left to compile."""
    assert not _triton.can_take(torch.empty(4, 70000), None, (0, 1))
    assert _triton.can_take(torch.empty(8, 70000), None, (1,))
    assert not _triton.can_take(torch.empty(4, 6, dtype=torch.float64), None, (1,))


@needs_triton
def test_state_is_checked_before_launch(interp):
    hp = AdamHyper(lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.0)
    got = make_tensors([((3, 4), (1,)), ((3, 4), (0,))], torch.float32, 2)
    got[1][3] = torch.ones(3, 1)  # fan_out needs (1, 4)
    before = clone(got)
    with pytest.raises(ValueError, match="state does not fit the parameter: exp_avg_sq"):
        _triton.step_bucket(*lists(got), hp)
    assert all(torch.equal(x, y) for a, b in zip(got, before) for x, y in zip(a[:5], b[:5]))


def step_triton_fan_in() -> None:
    """One SlimAdam(fused_backend="triton") step of a 3x4 CPU weight."""
    p = torch.nn.Parameter(torch.randn(3, 4))
    opt = SlimAdam([("w", p)], lr=1e-2, rules={"w": "fan_in"}, fused=True, fused_backend="triton")
    p.grad = torch.randn(3, 4)
    opt.step()


def test_cpu_without_interpreter_is_one_line_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match=r"^SlimAdam\(fused_backend='triton'\): CPU tensors need Triton's "
                                           r"interpreter \(set TRITON_INTERPRET=1[^\n]*$"):
        step_triton_fan_in()


def test_without_triton_is_one_line_error(interp, monkeypatch):
    monkeypatch.setattr(_triton, "_import_error", "Triton does not import (ModuleNotFoundError: no triton)")
    with pytest.raises(RuntimeError, match=r"^SlimAdam\(fused_backend='triton'\): Triton does not import .*"
                                           r"pip install 'slimbench\[gpu\]'[^\n]*$"):
        step_triton_fan_in()


def test_auto_leaves_cpu_tensors_to_the_native_kernel(interp):
    """fused_backend="auto" never sends CPU tensors to the interpreter, even with TRITON_INTERPRET set."""
    hp = AdamHyper(lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.0)
    got = make_tensors([((3, 4), (1,))], torch.float32, 4)
    before = clone(got)
    assert _triton.TRITON.step(tuple(lists(got)), hp, {}) == [0]
    assert all(torch.equal(x, y) for x, y in zip(got[0][:5], before[0][:5]))
    assert [b.name for b in _fused.chain("auto")] == ["native", "triton", "compile", "foreach"]


# --- CUDA: every SlimAdam path on the GPU equals the CPU for-loop (skipped without a GPU) ---------------

PATHS = [{"foreach": False}, {"foreach": True}, {"fused": True}, {"fused": True, "fused_backend": "compile"},
         {"fused": True, "fused_backend": "triton"}]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("impl", PATHS, ids=lambda d: "-".join(f"{k}={v}" for k, v in d.items()))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_paths_equal_cpu_for_loop(impl, dtype, monkeypatch):
    """bf16: the for-loop rounds after every op, the fused paths once, so a few bf16 ulps apart after 4 steps."""
    if impl.get("fused_backend") == "triton" and importlib.util.find_spec("triton") is None:
        pytest.skip("triton not installed")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    torch.manual_seed(0)
    model = Net().to(dtype)
    twin = copy.deepcopy(model).cuda()
    _, ref = train(model, 4, foreach=False)
    _, got = train(twin, 4, **impl)
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 3e-2, "atol": 1e-2}
    for x, y in zip(got, ref):
        torch.testing.assert_close(x, y, **tol)


def compiled_kernels(kernel) -> int:
    """How many binaries Triton has compiled for the kernel (its per-device kernel caches)."""
    return sum(len(entry[0]) for entry in kernel.device_caches.values())


@needs_triton
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_lr_schedule_compiles_once(monkeypatch):
    """An lr schedule and the default fused=True on CUDA (Triton) reuse the one compiled binary."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    torch.manual_seed(0)
    model = Net().cuda()
    train(model, 1, fused=True, fused_backend="triton")
    before = compiled_kernels(_triton.kernel())
    train(model, 4, fused=True)
    assert before >= 1 and compiled_kernels(_triton.kernel()) == before
