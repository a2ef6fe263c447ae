"""SlimAdam(fused=True): same maths as the for-loop, one compile per bucket structure, safe fallbacks.

Both fused backends run here: "auto" (the native C kernel for CPU fp32/fp64 tensors whose K is a
contiguous range of dims, torch.compile for the rest, e.g. K = (0, 2)) and "compile" (torch.compile only).

Compiling costs seconds per graph, so every test draws its tensors from a few fixed layouts (shapes, K and
param groups) and varies only what the compiled graphs take as data: hyperparameters, lr schedules,
number of steps, seeds. Graphs are cached per structure in the process, so examples after the first reuse
them. Run alone, the module takes about a minute on 2 busy CPU cores, most of it compiling.
"""
from __future__ import annotations

import dataclasses
import io
import itertools
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from slimbench import SlimAdam
from slimbench.optim import _compiled, _fused

# (groups of (shape, K)); group 2, when present, runs with lr / 3 and weight decay 0.05.
LAYOUTS = {
    "mixed": [[((4, 5), (1,)), ((3,), ()), ((2, 3, 4), (0, 2)), ((3, 4), (0,))]],
    # (8, 3) and (4, 2, 3) with leading K take the fused path's blocked column reduction.
    "two_groups": [[((2, 3, 2, 3), (1, 3)), ((8, 3), (0,))], [((5, 4), (0, 1)), ((6,), (0,)), ((4, 5), ()),
                                                            ((4, 2, 3), (0, 1))]],
}

hypers = st.fixed_dictionaries({
    "lr": st.floats(1e-4, 0.3),
    "betas": st.tuples(st.floats(0.0, 0.99), st.floats(0.5, 0.9999)),
    "eps": st.sampled_from([1e-8, 1e-6, 1e-3]),
    "weight_decay": st.sampled_from([0.0, 0.01, 0.3]),
})


@pytest.fixture(autouse=True)
def _fresh_warnings():
    """Fallback warnings are issued once per process; forget them so each test sees its own."""
    _fused._warned.clear()
    yield
    _fused._warned.clear()


def make_named(layout: str, seed: int, dtype: torch.dtype = torch.float32) -> list[list[tuple[str, torch.nn.Parameter]]]:
    g = torch.Generator().manual_seed(seed)
    out, i = [], 0
    for group in LAYOUTS[layout]:
        named = []
        for shape, _ in group:
            named.append((f"p{i}", torch.nn.Parameter(torch.randn(shape, generator=g, dtype=dtype))))
            i += 1
        out.append(named)
    return out


def rules_of(layout: str) -> dict:
    ks = [k for group in LAYOUTS[layout] for _, k in group]
    return {f"p{i}": list(k) for i, k in enumerate(ks)}


def build(layout: str, named: list, hp: dict, **impl) -> SlimAdam:
    groups = [{"params": named[0]}]
    if len(named) > 1:
        groups.append({"params": named[1], "lr": hp["lr"] / 3, "weight_decay": 0.05})
    return SlimAdam(groups, **hp, rules=rules_of(layout), **impl)


def set_grads(named: list, seed: int, step: int) -> None:
    g = torch.Generator().manual_seed(seed * 1000 + step + 1)
    for _, p in itertools.chain(*named):
        # Varying scales per entry, so means along K differ from the entries they replace.
        p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype) * torch.rand(p.shape, generator=g, dtype=p.dtype) * 3


def run(layout: str, hp: dict, steps: int, seed: int, dtype: torch.dtype = torch.float32,
        schedule: bool = False, **impl) -> list[torch.Tensor]:
    named = make_named(layout, seed, dtype)
    opt = build(layout, named, hp, **impl)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 / (1 + t)) if schedule else None
    for t in range(steps):
        set_grads(named, seed, t)
        opt.step()
        if sched is not None:
            sched.step()
    return [p.detach().clone() for _, p in itertools.chain(*named)]


def assert_close_fp32(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    """Within fp32 rounding: the reduction order and one multiply-for-divide differ from the for-loop."""
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


BACKENDS = ["auto", "compile"]


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=60)
@given(layout=st.sampled_from(sorted(LAYOUTS)), hp=hypers, steps=st.integers(1, 6), seed=st.integers(0, 2**16),
       schedule=st.booleans())
def test_fused_equals_for_loop(backend: str, layout: str, hp: dict, steps: int, seed: int, schedule: bool) -> None:
    ref = run(layout, hp, steps, seed, schedule=schedule, foreach=False)
    got = run(layout, hp, steps, seed, schedule=schedule, fused=True, fused_backend=backend)
    assert_close_fp32(ref, got)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_equals_for_loop_fp64_every_dims_subset(backend: str) -> None:
    """All 16 K of a 4-D tensor (plus 1-D and 2-D tensors) in one graph, in fp64: agreement to ~1e-15."""
    shape = (2, 3, 2, 3)
    ks = [k for r in range(5) for k in itertools.combinations(range(4), r)]
    g = torch.Generator().manual_seed(7)
    named = [(f"t{i}", torch.nn.Parameter(torch.randn(shape, generator=g, dtype=torch.float64))) for i in range(len(ks))]
    named += [("v", torch.nn.Parameter(torch.randn(5, generator=g, dtype=torch.float64))),
              ("w", torch.nn.Parameter(torch.randn(3, 4, generator=g, dtype=torch.float64)))]
    rules = {f"t{i}": list(k) for i, k in enumerate(ks)} | {"v": [0], "w": [1]}
    grads = [[torch.randn(p.shape, generator=g, dtype=torch.float64) for _, p in named] for _ in range(4)]
    outs = []
    for impl in ({"foreach": False}, {"fused": True, "fused_backend": backend}):
        params = [(n, torch.nn.Parameter(p.detach().clone())) for n, p in named]
        opt = SlimAdam(params, lr=0.05, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1, rules=rules, **impl)
        for gs in grads:
            for (_, p), gr in zip(params, gs):
                p.grad = gr.clone()
            opt.step()
        outs.append([p.detach() for _, p in params])
    for x, y in zip(*outs):
        torch.testing.assert_close(x, y, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("backend", BACKENDS)
def test_maximize_matches_for_loop(backend: str) -> None:
    hp = {"lr": 0.01, "betas": (0.9, 0.99), "eps": 1e-8, "weight_decay": 0.01, "maximize": True}
    assert_close_fp32(run("mixed", hp, 3, 1, foreach=False), run("mixed", hp, 3, 1, fused=True, fused_backend=backend))


@pytest.mark.parametrize("first,second", [("fused", "loop"), ("loop", "fused"), ("fused", "foreach"),
                                          ("compiled", "fused"), ("fused", "compiled")])
def test_state_dict_crosses_paths(first: str, second: str) -> None:
    """Save mid-run from one path, load into another, continue: same as one uninterrupted for-loop run."""
    impls = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True},
             "compiled": {"fused": True, "fused_backend": "compile"}}
    hp = {"lr": 0.02, "betas": (0.9, 0.99), "eps": 1e-8, "weight_decay": 0.1}
    layout, seed, steps, half = "two_groups", 3, 6, 3
    ref = run(layout, hp, steps, seed, foreach=False)

    named = make_named(layout, seed)
    opt = build(layout, named, hp, **impls[first])
    for t in range(half):
        set_grads(named, seed, t)
        opt.step()
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "params": [p.detach().clone() for _, p in itertools.chain(*named)]}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)

    named2 = make_named(layout, seed)
    with torch.no_grad():
        for (_, p), w in zip(itertools.chain(*named2), saved["params"]):
            p.copy_(w)
    opt2 = build(layout, named2, hp, **impls[second])
    opt2.load_state_dict(saved["opt"])
    # The implementation is the loading optimizer's own choice, not the checkpoint's.
    assert all(bool(g["fused"]) == (second in ("fused", "compiled")) for g in opt2.param_groups)
    for t in range(half, steps):
        set_grads(named2, seed, t)
        opt2.step()
    assert_close_fp32(ref, [p.detach() for _, p in itertools.chain(*named2)])


def test_schedules_and_hyperparameter_changes_never_recompile() -> None:
    """lr from a scheduler every step, then betas, eps and weight decay changed: one graph, compiled once."""
    counters = torch._dynamo.utils.counters
    named = make_named("mixed", 11)
    hp = {"lr": 0.01, "betas": (0.9, 0.99), "eps": 1e-8, "weight_decay": 0.0}
    opt = build("mixed", named, hp, fused=True, fused_backend="compile")
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=20)
    set_grads(named, 11, 0)
    opt.step()  # compiles, unless an earlier test already compiled this structure
    sched.step()
    graphs, frames = counters["stats"]["unique_graphs"], counters["frames"]["total"]
    lrs = set()
    for t in range(1, 9):
        if t == 5:
            opt.param_groups[0].update(betas=(0.5, 0.9), eps=1e-3, weight_decay=0.2)
        set_grads(named, 11, t)
        opt.step()
        lrs.add(opt.param_groups[0]["lr"])
        sched.step()
    assert len(lrs) == 8
    assert counters["stats"]["unique_graphs"] == graphs
    assert counters["frames"]["total"] == frames  # no recompile attempts either
    assert not _fused._broken


def test_fused_and_foreach_together_is_an_error() -> None:
    p = [("w", torch.nn.Parameter(torch.zeros(2, 2)))]
    with pytest.raises(ValueError, match="`fused` and `foreach` cannot be `True` together"):
        SlimAdam(p, fused=True, foreach=True)


def test_compile_failure_falls_back_to_foreach_with_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    """No usable C++ compiler: the step runs the foreach path, warns once, and the numbers are foreach's."""
    import torch._inductor.config as inductor_config

    hp = {"lr": 0.01, "betas": (0.9, 0.99), "eps": 1e-8, "weight_decay": 0.1}
    ref = run("mixed", hp, 3, 5, foreach=True)
    named = make_named("mixed", 5)
    # A structure no other test compiles (so no cached graph), and a compiler that does not exist.
    named[0].append(("extra", torch.nn.Parameter(torch.ones(7, 3))))
    opt = build("mixed", named, hp, fused=True, fused_backend="compile")
    with inductor_config.patch({"cpp.cxx": ("slimbench-no-such-compiler",), "fx_graph_cache": False}):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for t in range(3):
                set_grads(named, 5, t)
                named[0][-1][1].grad = torch.ones(7, 3)
                opt.step()
    fallbacks = [w for w in caught if "using the foreach path" in str(w.message)]
    assert len(fallbacks) == 1, [str(w.message) for w in caught]
    assert "could not compile" in str(fallbacks[0].message)
    got = [p.detach() for _, p in itertools.chain(*named)][:-1]
    for x, y in zip(ref, got):  # the fallback is the foreach path itself: bit-identical
        assert torch.equal(x, y)
    assert opt.state[named[0][0][1]]["step"].item() == 3  # the failed compile did not count a step


def test_unsupported_device_falls_back_with_one_warning() -> None:
    """Meta tensors: torch.compile has no backend for them; the step still runs (foreach) and warns once."""
    p = torch.nn.Parameter(torch.empty(4, 3, device="meta"))
    opt = SlimAdam([("w", p)], rules={"w": [1]}, fused=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            p.grad = torch.empty(4, 3, device="meta")
            opt.step()
    assert sum("torch.compile does not support device type 'meta'" in str(w.message) for w in caught) == 1
    assert opt.state[p]["exp_avg_sq"].shape == (4, 1)


def test_runs_eagerly_under_a_dispatch_mode() -> None:
    """slimbench.memory.profile's CPU tracker is a TorchDispatchMode: fused steps run under it, eagerly."""
    from slimbench.memory.profile import step_memory

    hp = {"lr": 0.01, "betas": (0.9, 0.99), "eps": 1e-8, "weight_decay": 0.1}
    named = make_named("mixed", 2)
    opt = build("mixed", named, hp, fused=True)
    set_grads(named, 2, 0)
    opt.step()
    mem = step_memory(opt)
    assert mem.retained_bytes == 0
    assert all(opt.state[p]["step"].item() == 2 for _, p in named[0])


def test_params_without_grads_are_skipped() -> None:
    named = make_named("mixed", 4)
    opt = build("mixed", named, {"lr": 0.01}, fused=True)
    set_grads(named, 4, 0)
    frozen = named[0][1][1]
    frozen.grad = None
    before = frozen.detach().clone()
    opt.step()
    assert torch.equal(frozen, before) and frozen not in opt.state


# ---------------------------------------------------------------------------------------------------------
# the native CPU kernel (fused_backend="auto")


def test_native_kernel_runs_without_compiling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every tensor of "two_groups" has K a contiguous range of dims: the C kernel takes all, nothing compiles."""
    monkeypatch.setattr(_compiled, "_compile_new", lambda: pytest.fail("the native path compiled a graph"))
    hp = {"lr": 0.02, "betas": (0.9, 0.99), "eps": 1e-8, "weight_decay": 0.1}
    assert_close_fp32(run("two_groups", hp, 4, 9, foreach=False), run("two_groups", hp, 4, 9, fused=True))


def test_native_kernel_with_two_threads() -> None:
    """Threads split work items; each owns its entries, and a column's sum runs down the rows in the same
    order however the columns are blocked, so owned items change nothing, to the bit. A block the team
    shares (a big fan_out gradient) adds per-thread partial sums: equal to fp32 rounding."""
    from slimbench.optim import _native

    hp = {"lr": 0.02, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1}
    # A big Adam tensor and many rows (ranges of entries / rows), a mid-size fan_out weight (a column block
    # per thread), a big one (shared by the team; BLOCK_BYTES is lowered to 1 MiB below to make it so).
    shapes = {"a": ((70000,), []), "rows": ((3000, 40), [1]), "mid": ((64, 2000), [0]), "big": ((300, 4000), [0])}

    def once(threads: int) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(0)
        named = [(n, torch.nn.Parameter(torch.randn(s, generator=g))) for n, (s, _) in shapes.items()]
        opt = SlimAdam(named, **hp, rules={n: k for n, (_, k) in shapes.items()}, fused=True)
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            for _ in range(3):
                for _, p in named:
                    p.grad = torch.randn(p.shape, generator=g)
                opt.step()
        finally:
            torch.set_num_threads(before)
        return [p.detach() for _, p in named]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_native, "BLOCK_BYTES", 1 << 20)
        _fused.clear_cache()
        plan = _native.make_plan([torch.Size(s) for s, _ in shapes.values()], [tuple(k) for _, k in shapes.values()],
                                 4, threads=2)
        items = list(plan.items)
        assert [items[4 * k] for k in range(plan.n_items)].count(2) == 2  # "mid": one column block per thread
        assert plan.n_shared == 1 and plan.shared[0] == 3  # "big": one block, shared
        one, two, three = once(1), once(2), once(3)  # three threads on two cores: barriers still hold
    _fused.clear_cache()
    for x, y, z in zip(one[:3], two[:3], three[:3]):
        assert torch.equal(x, y) and torch.equal(x, z)
    assert_close_fp32(one[3:], two[3:])
    assert_close_fp32(one[3:], three[3:])


def _native_steps(shapes: list[tuple[tuple[int, ...], tuple[int, ...]]], dtype: torch.dtype, threads: int,
                  steps: int = 3, seed: int = 0, **impl) -> list[torch.Tensor]:
    """p, M and V after ``steps`` SlimAdam steps of tensors ``shapes`` ((shape, K) each) with ``threads``."""
    g = torch.Generator().manual_seed(seed)
    named = [(f"t{i}", torch.nn.Parameter(torch.randn(s, generator=g, dtype=torch.float64).to(dtype)))
             for i, (s, _) in enumerate(shapes)]
    opt = SlimAdam(named, lr=0.02, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1,
                   rules={f"t{i}": list(k) for i, (_, k) in enumerate(shapes)}, **impl)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(steps):
            for _, p in named:
                p.grad = (torch.randn(p.shape, generator=g, dtype=torch.float64)
                          * torch.rand(p.shape, generator=g, dtype=torch.float64) * 3).to(dtype)
            opt.step()
    finally:
        torch.set_num_threads(before)
    return [t.detach().clone() for _, p in named for t in (p, opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"])]


# Column blocks of unequal heights back to back (the next block taller, shorter, one row), several slabs (K in
# the middle), and a trailing-K and a K = () tensor between them (the plan puts column blocks first).
CHAIN = [((40, 33), (0,)), ((20, 8), (1,)), ((7, 50), (0,)), ((3, 5, 20), (1,)), ((2, 9), (0,)), ((30,), ()),
         ((90, 17), (0,))]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("max_w", [16, 4096])
def test_native_column_chain_one_thread(dtype: torch.dtype, max_w: int) -> None:
    """With one thread the kernel pipelines a run of column blocks (block k's update interleaved with block
    k+1's sums; fp32/fp64 update M in the sums pass). It is bit-identical to every block done on its own
    (two threads: a chain of one per item), and equals the for-loop (fp64 to 1e-13, fp32 to rounding)."""
    from slimbench.optim import _native

    _native.library()  # loaded (and its block size checked against MAX_W) before MAX_W is patched
    if dtype not in _native.DTYPES:
        pytest.skip(f"this C compiler builds no {dtype} entry point")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_native, "MAX_W", max_w)  # 16: several blocks per tensor, so chains cross blocks of one slab
        mp.setattr(_compiled, "_compile_new", lambda: pytest.fail("the native path compiled a graph"))
        _fused.clear_cache()
        plan = _native.make_plan([torch.Size(s) for s, _ in CHAIN], [k for _, k in CHAIN], 4, threads=1)
        views = [_native.native_view(*CHAIN[plan.items[4 * k]]) for k in range(plan.n_items)]
        kinds = [r > 1 and i > 1 for _, r, i in views]  # column blocks (K leading or in the middle)
        n_cols = kinds.count(True)
        assert n_cols >= 4 and kinds == [True] * n_cols + [False] * (plan.n_items - n_cols)  # one run, first
        one = _native_steps(CHAIN, dtype, threads=1, fused=True)
        two = _native_steps(CHAIN, dtype, threads=2, fused=True)
    _fused.clear_cache()
    for x, y in zip(one, two):
        assert torch.equal(x, y)
    if dtype in (torch.float32, torch.float64):
        ref = _native_steps(CHAIN, dtype, threads=1, foreach=False)
        tol = {"rtol": 1e-13, "atol": 1e-14} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-6}
        for x, y in zip(one, ref):
            torch.testing.assert_close(x, y, **tol)


@settings(max_examples=40, deadline=None)
@given(shapes=st.lists(st.tuples(st.integers(2, 40), st.integers(2, 40)), min_size=1, max_size=4),
       max_w=st.sampled_from([16, 4096]), seed=st.integers(0, 2**16))
def test_native_column_chain_equals_for_loop_fp64(shapes: list[tuple[int, int]], max_w: int, seed: int) -> None:
    """Any heights and widths of fan_out weights in one chain (one thread), in fp64: the for-loop's result."""
    from slimbench.optim import _native

    layout = [(s, (0,)) for s in shapes]
    _native.library()  # loaded before MAX_W is patched, as above
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_native, "MAX_W", max_w)
        mp.setattr(_compiled, "_compile_new", lambda: pytest.fail("the native path compiled a graph"))
        _fused.clear_cache()
        got = _native_steps(layout, torch.float64, threads=1, steps=2, seed=seed, fused=True)
    _fused.clear_cache()
    ref = _native_steps(layout, torch.float64, threads=1, steps=2, seed=seed, foreach=False)
    for x, y in zip(got, ref):
        torch.testing.assert_close(x, y, rtol=1e-13, atol=1e-14)


def test_native_unavailable_falls_back_to_compile_with_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    from slimbench.optim import _native

    def no_compiler(force: bool = False):
        raise _native.NativeUnavailable("no C compiler found (set $CC, or install gcc)")

    monkeypatch.setattr(_native, "_lib", None)
    monkeypatch.setattr(_native, "_lib_error", None)
    monkeypatch.setattr(_native, "build", no_compiler)
    hp = {"lr": 0.01, "betas": (0.9, 0.99), "eps": 1e-8, "weight_decay": 0.1}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = run("two_groups", hp, 3, 4, fused=True)
    msgs = [str(w.message) for w in caught if "native CPU kernel is unavailable" in str(w.message)]
    assert len(msgs) == 1 and "no C compiler" in msgs[0]
    assert_close_fp32(run("two_groups", hp, 3, 4, foreach=False), got)


def test_tensors_the_kernel_cannot_take_go_to_the_compiled_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A transposed (non-contiguous) gradient one step, and K = (0, 2): both still get SlimAdam's update."""
    from slimbench.optim import _native

    left: list[list[int]] = []  # per fused step: indices the kernel left to torch.compile
    real = _native.step_where_possible

    def spy(*args, **kwargs):
        left.append(real(*args, **kwargs))
        return left[-1]

    monkeypatch.setattr(_native, "step_where_possible", spy)
    hp = {"lr": 0.01, "betas": (0.9, 0.99), "eps": 1e-8, "weight_decay": 0.0}
    outs = []
    for impl in ({"foreach": False}, {"fused": True}):
        g = torch.Generator().manual_seed(3)
        named = [("w", torch.nn.Parameter(torch.randn(4, 5, generator=g))),
                 ("t", torch.nn.Parameter(torch.randn(2, 3, 4, generator=g)))]
        opt = SlimAdam(named, **hp, rules={"w": [1], "t": [0, 2]}, **impl)
        for step in range(3):
            grad = torch.randn(5, 4, generator=g)
            named[0][1].grad = grad.t() if step == 1 else grad.t().contiguous()
            named[1][1].grad = torch.randn(2, 3, 4, generator=g)
            opt.step()
        outs.append([p.detach() for _, p in named])
    assert left == [[1], [0, 1], [1]]
    assert_close_fp32(*outs)


@settings(max_examples=100, deadline=None)
@given(shape=st.lists(st.integers(1, 40), min_size=1, max_size=4), data=st.data())
def test_native_plan_covers_every_entry_once(shape: list[int], data) -> None:
    """Work items (owned or shared) partition each tensor: every entry of p and of V is in exactly one."""
    from slimbench.optim import _native

    n = len(shape)
    lo = data.draw(st.integers(0, n))
    hi = data.draw(st.integers(lo, n))
    dims = tuple(range(lo, hi))
    o, r, i = _native.native_view(tuple(shape), dims)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_native, "ITEM_ENTRIES", data.draw(st.sampled_from([16, 1 << 14])))
        mp.setattr(_native, "BLOCK_BYTES", data.draw(st.sampled_from([64, 1 << 22])))
        mp.setattr(_native, "MAX_W", data.draw(st.sampled_from([16, 2048])))
        plan = _native.make_plan([torch.Size(shape)], [dims], 4, threads=data.draw(st.integers(1, 3)))
    seen = torch.zeros(o, r, i, dtype=torch.int64)
    items = list(plan.items) + list(plan.shared)  # shared blocks: columns of a fan_out tensor, like items
    assert plan.n_shared == 0 or (r > 1 and i > 1)
    for k in range(plan.n_items + plan.n_shared):
        t, oo, a, b = items[4 * k: 4 * k + 4]
        assert t == 0
        if r == 1:
            seen.view(-1)[a:b] += 1
        elif i == 1:
            seen[a:b] += 1
        else:
            assert b - a <= _native.MAX_W
            seen[oo, :, a:b] += 1
    assert torch.equal(seen, torch.ones_like(seen))


def test_native_view_needs_a_contiguous_range_of_dims() -> None:
    from slimbench.optim import _native

    assert _native.native_view((3, 4), ()) == (12, 1, 1)
    assert _native.native_view((3, 4), (0,)) == (1, 3, 4)
    assert _native.native_view((3, 4), (1,)) == (3, 4, 1)
    assert _native.native_view((2, 3, 4, 5), (1, 2)) == (2, 12, 5)
    assert _native.native_view((2, 3, 4), (0, 2)) is None


def test_native_library_is_cached_by_content(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Built once into $SLIMBENCH_CACHE/kernels, under a name hashing source, flags, compiler and CPU, with
    its sha256 recorded beside it."""
    import hashlib

    from slimbench.optim import _native

    monkeypatch.setenv("SLIMBENCH_CACHE", str(tmp_path))
    first = _native.build()
    mtime = first.stat().st_mtime_ns
    assert first.parent == tmp_path / "kernels" and first.name.startswith("slimadam_")
    assert _native.build() == first and first.stat().st_mtime_ns == mtime  # not rebuilt
    record = first.with_suffix(".sha256")
    assert sorted(p.name for p in first.parent.iterdir()) == sorted([first.name, record.name])  # no temporaries
    assert record.read_text().strip() == hashlib.sha256(first.read_bytes()).hexdigest()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fused_on_cuda_is_the_compiled_path_and_matches_the_for_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU, fused=True compiles (Triton): same numbers as the for-loop on the same device."""
    from slimbench.optim import _native

    hp = {"lr": 0.02, "betas": (0.9, 0.99), "eps": 1e-8, "weight_decay": 0.1}
    left: list[list[int]] = []  # per fused step: indices the kernel left to torch.compile
    real = _native.step_where_possible
    monkeypatch.setattr(_native, "step_where_possible", lambda *a, **kw: left.append(real(*a, **kw)) or left[-1])
    outs = []
    for impl in ({"foreach": False}, {"fused": True}):
        g = torch.Generator().manual_seed(5)
        named = [(n, torch.nn.Parameter(torch.randn(s, generator=g).cuda())) for n, s in
                 (("w", (64, 48)), ("u", (48, 64)), ("b", (48,)))]
        opt = SlimAdam(named, **hp, rules={"w": "fan_in", "u": "fan_out"}, **impl)
        for _ in range(3):
            for _, p in named:
                p.grad = torch.randn(p.shape, generator=g).cuda()
            opt.step()
            torch.cuda.synchronize()
        outs.append([p.detach().cpu() for _, p in named])
    assert left and all(rest == list(range(len(rest))) and rest for rest in left)  # the CPU kernel took none
    assert_close_fp32(*outs)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_native_half_precision_rounds_once_per_stored_value(dtype: torch.dtype) -> None:
    """bf16 / fp16: the kernel computes in fp32 and rounds each stored p, M, V once. The reference does the
    same maths in fp64 from the same half-precision state and rounds once per step: within one ulp."""
    from slimbench.optim._functional import AdamHyper, _single_tensor_slimadam

    hp = AdamHyper(lr=0.01, beta1=0.9, beta2=0.95, eps=1e-6, weight_decay=0.1)
    shapes = {"w": ((48, 40), (1,)), "u": ((40, 48), (0,)), "b": ((40,), ())}
    g = torch.Generator().manual_seed(8)
    named = [(n, torch.nn.Parameter(torch.randn(s, generator=g).to(dtype))) for n, (s, _) in shapes.items()]
    opt = SlimAdam(named, lr=hp.lr, betas=(hp.beta1, hp.beta2), eps=hp.eps, weight_decay=hp.weight_decay,
                   rules={n: list(k) for n, (_, k) in shapes.items()}, fused=True)
    ref = {n: [p.detach().clone(), torch.zeros_like(p), None, torch.tensor(0.0)] for n, p in named}
    for n, (s, k) in shapes.items():
        ref[n][2] = torch.zeros(tuple(1 if i in k else d for i, d in enumerate(s)), dtype=dtype)
    for _ in range(4):
        for n, p in named:
            p.grad = (0.1 * torch.randn(p.shape, generator=g)).to(dtype)
            wide = [t.double() for t in ref[n][:3]]
            decayed = hp if p.dim() >= 2 else dataclasses.replace(hp, weight_decay=0.0)  # SlimAdam decays matrices
            _single_tensor_slimadam([wide[0]], [p.grad.double()], [wide[1]], [wide[2]], [ref[n][3]],
                                    [shapes[n][1]], decayed)
            ref[n][:3] = [t.to(dtype) for t in wide]
        opt.step()
    ulp = torch.finfo(dtype).eps
    for n, p in named:
        st = opt.state[p]
        for got, want in ((p.detach(), ref[n][0]), (st["exp_avg"], ref[n][1]), (st["exp_avg_sq"], ref[n][2])):
            torch.testing.assert_close(got.float(), want.float(), rtol=ulp, atol=1e-6)


def test_a_dtype_the_kernel_library_lacks_goes_to_the_compiled_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A C compiler without _Float16 builds a library with no f16 entry point: fp16 is compiled instead."""
    from slimbench.optim import _native

    real = _native.library()

    class NoF16:
        def __getattr__(self, name: str):
            if name == "slimadam_step_f16":
                raise AttributeError(name)
            return getattr(real, name)

    monkeypatch.setattr(_native, "DTYPES", dict(_native.DTYPES))
    monkeypatch.setattr(_native, "_lib", None)
    monkeypatch.setattr(_native, "_lib_error", None)
    monkeypatch.setattr(_native.ctypes, "CDLL", lambda path: NoF16())
    monkeypatch.setattr(_fused, "_checked", {})  # forget which tensors the real library took
    hp = {"lr": 0.01, "betas": (0.9, 0.99), "eps": 1e-6, "weight_decay": 0.0}
    p = torch.nn.Parameter(torch.randn(6, 5).half())
    opt = SlimAdam([("w", p)], **hp, rules={"w": [1]}, fused=True)
    p.grad = torch.randn(6, 5).half()
    opt.step()
    assert torch.float16 not in _native.DTYPES and torch.float32 in _native.DTYPES
    assert opt.state[p]["step"].item() == 1 and opt.state[p]["exp_avg_sq"].abs().sum() > 0


def test_a_compiler_that_fails_is_a_clear_native_unavailable(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`$CC` that exits non-zero: NativeUnavailable naming the compiler, and no half-written library left."""
    import shutil

    from slimbench.optim import _native

    false = shutil.which("false")
    if false is None:
        pytest.skip("no `false` command")
    monkeypatch.setenv("CC", false)
    monkeypatch.setenv("SLIMBENCH_CACHE", str(tmp_path))
    with pytest.raises(_native.NativeUnavailable, match="failed to compile _native_kernel.c"):
        _native.build()
    assert list((tmp_path / "kernels").iterdir()) == []


# --- tensors whose K crosses ranks: local sums, one all-reduce, the kernel with the sums given -----------

def _simulated_ranks(shape: tuple[int, ...], k: tuple[int, ...], split: int, ranks: int, dtype: torch.dtype,
                     steps: int = 6, threads: int = 1, monkeypatch: pytest.MonkeyPatch | None = None,
                     ref: str = "foreach") -> dict:
    """One tensor cut into ``ranks`` shards on dim ``split`` (torch.tensor_split: uneven, empty ones), each
    shard stepped by ``_fused._fused_slimadam`` with a CrossRank whose all_reduce adds every shard's local
    sums (what gloo's all-reduce returns), against the foreach path on the whole tensor (``ref="native"``:
    the kernel's own step on the whole tensor, the same rounding for the half types). Returns the
    largest error, the all-reduces per call and what the kernel's ``step_given`` took."""
    from slimbench.optim import _native
    from slimbench.optim._functional import AdamHyper, _multi_tensor_slimadam
    from slimbench.optim._reduce import CrossRank, reduced_shape, sum_sq

    hp = AdamHyper(0.02, 0.9, 0.99, 1e-8, 0.1)
    gen = torch.Generator().manual_seed(7)
    p = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    m, v, step = torch.zeros_like(p), torch.zeros(reduced_shape(shape, k), dtype=dtype), torch.zeros(())
    shards = [x.clone().contiguous() for x in torch.tensor_split(p, ranks, dim=split)]
    ms = [torch.zeros_like(x) for x in shards]
    vs = [torch.zeros(reduced_shape(x.shape, k), dtype=dtype) for x in shards]
    steps_s = [torch.zeros(()) for _ in shards]
    n_k = 1
    for d in k:
        n_k *= shape[d]
    calls, taken = [], []
    real = _native.step_given

    def spy(params, *args, **kwargs):
        rest = real(params, *args, **kwargs)
        taken.append(len(params) - len(rest))
        return rest
    monkeypatch.setattr(_native, "step_given", spy)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(steps):
            g = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
            if ref == "foreach":
                _multi_tensor_slimadam([p], [g], [m], [v], [step], [k], hp)
            else:
                _fused._fused_slimadam([p], [g], [m], [v], [step], [k], hp)
            gs = [x.contiguous() for x in torch.tensor_split(g, ranks, dim=split)]
            local = [sum_sq(x, k) for x in gs]
            for r in range(ranks):
                n_calls = [0]

                def all_reduce(ts: list[torch.Tensor], n_calls=n_calls) -> None:
                    n_calls[0] += 1
                    for t in ts:
                        t.copy_(sum(s.to(t.dtype) for s in local))
                _fused._fused_slimadam([shards[r]], [gs[r]], [ms[r]], [vs[r]], [steps_s[r]], [k], hp, "auto",
                                       CrossRank((n_k,), all_reduce))
                calls.append(n_calls[0])
    finally:
        torch.set_num_threads(old)
    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return ((a.double() - b.double()).abs() / b.double().abs().clamp_min(1e-3)).max().item()
    err = max((torch.cat(shards, split) - p).abs().max().item(), (torch.cat(ms, split) - m).abs().max().item(),
              max((x - v).abs().max().item() for x in vs))
    if ref != "foreach":
        err = max(rel(torch.cat(shards, split), p), rel(torch.cat(ms, split), m), max(rel(x, v) for x in vs))
    return {"err": err, "calls": calls, "taken": taken,
            "steps": [s.item() for s, x in zip(steps_s, shards) if x.numel()]}


@pytest.mark.parametrize("shape,k,split", [((7, 6), (0,), 0), ((7, 6), (0, 1), 0), ((7, 6), (1,), 1),
                                           ((6, 7), (0, 1), 1), ((3, 2, 3, 3), (0,), 0), ((3, 2, 3, 3), (0, 1), 0),
                                           ((3, 2, 3, 3), (0, 1, 2, 3), 0), ((2, 5), (0,), 0),
                                           ((5, 2, 3), (1, 2), 1), ((4, 300, 9), (1,), 1)])
@pytest.mark.parametrize("ranks", [2, 3, 4])
def test_native_with_sums_given_equals_one_process_fp64(shape, k, split, ranks, monkeypatch) -> None:
    """The kernel's ``slimadam_given_f64`` on every shard (FSDP2's dim 0, tensor parallelism's dim 1; uneven
    and empty shards; K leading, trailing, middle, all dims) == the foreach path on the whole tensor to 1e-12
    over 6 steps, one all-reduce per call, every nonempty shard through the kernel and no warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = _simulated_ranks(shape, k, split, ranks, torch.float64, monkeypatch=monkeypatch)
    assert out["err"] <= 1e-12, out
    assert out["calls"] == [1] * (6 * ranks), out
    nonempty = [x.numel() > 0 for x in torch.tensor_split(torch.empty(shape), ranks, dim=split)]
    assert out["taken"] == [int(ne) for ne in nonempty] * 6, out
    assert out["steps"] == [6.0] * sum(nonempty), out


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2 ** -6), (torch.float16, 2 ** -9)])
@pytest.mark.parametrize("threads", [1, 2])
def test_native_with_sums_given_other_dtypes_and_threads(dtype, tol, threads, monkeypatch) -> None:
    """fp32 and the half types (computed in fp32, each stored value rounded once) with one and two threads,
    K leading (column blocks) and trailing (rows): within two ulps (relative) of the kernel's own step on the
    whole tensor over 3 steps (the shards' sums are formed in fp32 and added across ranks, the whole
    tensor's in double: V may differ in its last bit)."""
    from slimbench.optim import _native

    _native.library()  # loading drops a dtype whose entry point the library lacks
    if dtype not in _native.DTYPES:
        pytest.skip(f"the kernel library has no {dtype} entry point")
    for shape, k, split in (((9, 70), (0,), 0), ((9, 70), (1,), 1), ((4, 3, 5), (0, 1), 0)):
        out = _simulated_ranks(shape, k, split, 3, dtype, steps=3, threads=threads, monkeypatch=monkeypatch,
                               ref="native")
        assert out["err"] <= tol and out["calls"] == [1] * 9 and sum(out["taken"]) == 9, (shape, k, out)


def test_crossing_tensors_the_kernel_cannot_take_run_foreach_on_the_same_all_reduce(monkeypatch) -> None:
    """K = (0, 2) (not a range of dims) crossing ranks: the foreach path with the sums already reduced (one
    all-reduce for the call, shared with a tensor the kernel takes) and one warning, equal to one process."""
    from slimbench.optim._functional import AdamHyper, _multi_tensor_slimadam
    from slimbench.optim._reduce import CrossRank, reduced_shape, sum_sq

    hp = AdamHyper(0.02, 0.9, 0.99, 1e-8, 0.1)
    gen = torch.Generator().manual_seed(1)
    shapes, ks = [(4, 3, 5), (5, 6)], [(0, 2), (0,)]
    ps = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    ms = [torch.zeros_like(x) for x in ps]
    vs = [torch.zeros(reduced_shape(s, k), dtype=torch.float64) for s, k in zip(shapes, ks)]
    st_ = [torch.zeros(()) for _ in ps]
    sh = [[x.clone() for x in torch.tensor_split(p, 2)] for p in ps]  # [tensor][rank]
    sm = [[torch.zeros_like(x) for x in t] for t in sh]
    sv = [[torch.zeros(reduced_shape(x.shape, k), dtype=torch.float64) for x in t] for t, k in zip(sh, ks)]
    ss = [[torch.zeros(()) for _ in t] for t in sh]
    counts = (4 * 5, 5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(4):
            gs = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
            _multi_tensor_slimadam(ps, gs, ms, vs, st_, ks, hp)
            parts = [[x.contiguous() for x in torch.tensor_split(g, 2)] for g in gs]
            totals = [sum(sum_sq(x, k) for x in t) for t, k in zip(parts, ks)]
            for r in range(2):
                n = [0]

                def all_reduce(ts, n=n):
                    n[0] += 1
                    for t, tot in zip(ts, totals):
                        t.copy_(tot)
                _fused._fused_slimadam([sh[0][r], sh[1][r]], [parts[0][r], parts[1][r]], [sm[0][r], sm[1][r]],
                                       [sv[0][r], sv[1][r]], [ss[0][r], ss[1][r]], ks, hp, "auto",
                                       CrossRank(counts, all_reduce))
                assert n[0] == 1
    msgs = [str(w.message) for w in caught if "across ranks" in str(w.message)]
    assert len(msgs) == 1 and "the native kernel cannot take them" in msgs[0], msgs
    for t in range(2):
        assert (torch.cat(sh[t]) - ps[t]).abs().max().item() <= 1e-12
        assert max((v - vs[t]).abs().max().item() for v in sv[t]) <= 1e-12


def test_native_given_entry_point_checks_its_plan_before_touching_memory() -> None:
    """``slimadam_given_f64`` handed a plan that does not fit its (O, R, I, n_K, O*I): a negative code and
    every tensor unchanged (sums with too few entries, n_K below the local R, a row or column past the
    tensor, a block wider than MAX_W, a null pointer, a bad thread count)."""
    import array
    import ctypes

    from slimbench.optim import _native

    lib = _native.library()
    fn = lib.slimadam_given_f64
    p, g, m = torch.ones(4, 3, dtype=torch.float64), torch.ones(4, 3, dtype=torch.float64), torch.zeros(4, 3, dtype=torch.float64)
    v, s, step = torch.zeros(1, 3, dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64), torch.zeros(())
    before = [x.clone() for x in (p, m, v, step)]

    def call(meta, items, ptrs=None, threads=1):
        ptrs = ptrs or [x.data_ptr() for x in (p, g, m, v, step, s)]
        pa = array.array("q", ptrs)
        mt = (ctypes.c_int64 * len(meta))(*meta)
        it = (ctypes.c_int64 * max(1, len(items)))(*items)
        return fn(1, pa.buffer_info()[0], mt, it, len(items) // 4, 0.1, 0.9, 0.99, 1e-8, 0.0, 0, threads)

    good_meta, good_items = [1, 4, 3, 8, 3], [0, 0, 0, 3]  # (O, R, I) = (1, 4, 3): one column block
    assert call([1, 4, 3, 8, 2], good_items) == -2  # sums with 2 entries where V has 3
    assert call([1, 4, 3, 3, 3], good_items) == -2  # n_K 3 < the local R 4
    assert call([1, 0, 3, 8, 3], good_items) == -2  # a zero extent
    assert call(good_meta, [0, 1, 0, 3]) == -3  # o past O
    assert call(good_meta, [0, 0, 0, 4]) == -3  # column past I
    assert call(good_meta, [0, 0, 2, 2]) == -3  # empty range
    assert call(good_meta, [1, 0, 0, 3]) == -3  # tensor past n
    assert call([4, 3, 1, 6, 4], [0, 0, 0, 5]) == -3  # rows (I == 1) past O
    ptrs = [x.data_ptr() for x in (p, g, m, v, step, s)]
    assert call(good_meta, good_items, ptrs=ptrs[:5] + [0]) == -1  # a null sums pointer
    assert call(good_meta, good_items, threads=0) == -1
    for x, b in zip((p, m, v, step), before):
        assert torch.equal(x, b)
    assert call(good_meta, good_items) == 0 and step.item() == 1.0
    # V = (1 - b2) * 1 / 8 per column (the sums given, divided by n_K), not G's local mean (1)
    torch.testing.assert_close(v, torch.full((1, 3), 0.01 / 8, dtype=torch.float64), rtol=1e-15, atol=0)
