r"""Fused SlimAdam: a group's whole update in a few passes over memory.

``fused=True`` first offers every tensor to the hand-written CPU kernel (:mod:`slimbench.optim._native`:
CPU fp32/fp64/bf16/fp16, K a contiguous range of dims; backend "auto"); what it does not take (GPU
tensors, K such as (0, 2), a non-contiguous gradient), or everything with ``fused_backend="compile"``,
is compiled by ``torch.compile`` as described below.

The maths is the for-loop's (:mod:`slimbench.optim._functional`); only the execution differs. Tensors are
bucketed by (device, dtype) and each bucket's update is one compiled graph, whatever each tensor's K (the
dims are static per tensor inside the graph). Inductor turns a bucket into one C++/OpenMP function on CPU
(Triton kernels on GPU) that, per tensor, makes one reduction pass over G for mean_K(G*G) (none when K =
(); in blocks of rows when K are leading dims such as fan_out, see ``_mean_sq_leading``) and one fused
pass that updates p and M in place, plus a small pass over the reduced V::

    r   = mean_K(G*G)                                    reduction pass (reads G)
    V  <- b2 * V + (1 - b2) * r                          reduced shape only
    s   = -lr / (1 - b1^t) / (sqrt(V) / sqrt(1 - b2^t) + eps)      reduced shape, computed once
    M  <- M + (1 - b1) (G - M);  p <- p (1 - lr wd) + M s      fused pass (reads G, p, M; writes p, M)

The step counters are incremented inside the graph too. Byte model per step, per parameter of n entries
of b bytes: G read twice, p and M read and written, so 6nb plus the reduced V; fused AdamW moves 7nb (G
read; p, M, V read and written). ``s`` multiplies where the for-loop divides (``p + (-step_size * M) /
denom``) and M's lerp is written out, so the two paths agree to fp rounding, not to the bit.

Nothing that changes during training is baked into a graph: every scalar -- lr, betas, eps, weight decay
and the bias corrections from each tensor's own step -- reaches the kernel through one small coefficient
table (one row per tensor, computed in Python double precision exactly as the for-loop computes them, then
rounded to the opmath dtype as eager torch rounds a Python scalar). A scheduler changing lr every step,
or a change of betas, never recompiles. A graph is specialised only to its bucket's structure: device,
dtype, ``maximize``, each tensor's shape, strides and K, and (on CPU) the number of torch threads, which
inductor bakes into the C++ it generates.

Memory: no full-size temporary. Because a bucket is one C++ function, its small intermediates (the
reduced sums, the blocked partial sums of leading-K reductions, the scales) are all allocated for the
call: 0.1-0.2 MB for a 4M-parameter GPT, 4.9 MB for 30M (fused AdamW allocates nothing; foreach AdamW
a full copy of the parameters).

Compiling is a one-off cost per bucket structure: seconds for a few small tensors, 10-25 s cold for a
GPT-style group of 1M-30M parameters on 2 busy CPU cores, about 1 s in a later process, from inductor's
on-disk cache (suites/test_bench_fused.py measures both). Where it
cannot compile (no C++ compiler, a device inductor does not support, an inductor error) the bucket runs
the foreach path instead, with one warning per distinct reason, never a crash.

Safety (:func:`check_state`): both fused paths index memory by the parameter's shape, so before either
runs, every tensor is checked against its parameter: the gradient and exp_avg have its shape, dtype and
device, exp_avg_sq exactly the reduced shape for its K, K are distinct dims of the parameter, the step is
a one-element float tensor, no two parameters share memory, and the parameter is real floating point.
A mismatch is a one-line ValueError (e.g. a checkpoint's state that does not fit the parameter) before
anything is updated. The checks depend only on each tensor's shape, dtype, device and K, so they run once
per :func:`signature` (cached; a hit costs building and hashing the signature, which also caches which
tensors the native kernel takes and its plan); zero-size tensors are skipped.

Huge and non-finite gradients: one contract on every path (for-loop, foreach, native, compiled), the
for-loop's, i.e. torch's arithmetic in the parameter's dtype (fp32 for the half types):
  * K = (): V gains ((1 - b2) * G) * G, the order of torch's addcmul, so the result is AdamW's;
  * otherwise V gains (1 - b2) * mean_K(G*G), where the sum of squares over K is formed in that dtype:
    past its largest finite value (fp32: a sum of G^2 above 3.4e38, e.g. one |G| >= 1.9e19) it is +inf.
  * A V that is +inf (from a huge or infinite G) stays +inf for good: every entry sharing it (its
    row, column or tensor) gets no gradient update from then on, only weight decay; an entry whose own
    G was +-inf becomes NaN (M = inf, inf/inf), as in AdamW.
  * A NaN in G makes V NaN, so every entry sharing that V is NaN after the same step.
"""
from __future__ import annotations

import operator
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from slimbench.optim._functional import (
    FUSED_BACKENDS,
    AdamHyper,
    _multi_tensor_slimadam,
    group_for_foreach,
    reduced_shape,
)

# Columns of the coefficient table, one row per tensor of a bucket.
COLUMNS = ("decay", "one_minus_beta1", "beta2", "one_minus_beta2", "neg_step_size", "bias_correction2_sqrt", "eps")
DECAY, W1, B2, W2, NEG_STEP, BC2_SQRT, EPS = range(len(COLUMNS))

COMPILABLE_DEVICES = ("cpu", "cuda", "xpu")

# Bucket structure -> compiled graph. Key: (device, dtype, maximize, dims and shape per tensor, threads).
_kernels: dict[tuple, Callable] = {}
_broken: dict[tuple, str] = {}  # structures that could not compile -> reason; they run the foreach path
_warned: set[str] = set()

PREFIX = "SlimAdam(fused=True)"
_SHAPE, _DTYPE, _CPU, _NBYTES, _DEVICE = (operator.attrgetter(a) for a in ("shape", "dtype", "is_cpu", "nbytes",
                                                                            "device"))
_CONTIGUOUS = operator.methodcaller("is_contiguous")
MAX_CHECKED = 1024  # signatures remembered; more (shapes changing every call) start the cache afresh


@dataclass
class Checked:
    """What the checks of one call signature found: the non-empty tensors' indices (None: all of them),
    and the native kernel's per-bucket scratch (see ``_native.step_where_possible``)."""

    keep: list[int] | None
    native: dict = field(default_factory=dict)


_checked: dict[tuple, Checked] = {}


def _desc(t: Tensor) -> str:
    return f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')} on {t.device}"


def _check_dims(p: Tensor, k: object, where: str) -> None:
    if not isinstance(k, tuple) or not all(type(d) is int for d in k):
        raise ValueError(f"{PREFIX}: K must be a tuple of ints, got {k!r} ({where})")
    if len(set(k)) != len(k) or any(not 0 <= d < p.dim() for d in k):
        raise ValueError(f"{PREFIX}: K={k} is not a set of distinct dims of a {p.dim()}-D parameter of shape "
                         f"{tuple(p.shape)} ({where})")


def _check_one(p: Tensor, g: Tensor, m: Tensor, v: Tensor, s: Tensor, k: tuple[int, ...], where: str) -> None:
    for name, t in (("the parameter", p), ("the gradient", g), ("exp_avg", m), ("exp_avg_sq", v), ("step", s)):
        if not isinstance(t, Tensor):
            raise ValueError(f"{PREFIX}: {name} is {type(t).__name__}, not a tensor ({where})")
    if not p.is_floating_point():
        raise ValueError(f"{PREFIX}: the parameter is {_desc(p)}; SlimAdam updates real floating-point tensors "
                         f"only ({where})")
    _check_dims(p, k, where)
    same = (p.shape, p.dtype, p.device)
    if (g.shape, g.dtype, g.device) != same:
        raise ValueError(f"{PREFIX}: the gradient does not fit the parameter: gradient {_desc(g)}, parameter "
                         f"{_desc(p)} ({where})")
    if (m.shape, m.dtype, m.device) != same:
        raise ValueError(f"{PREFIX}: state does not fit the parameter: exp_avg is {_desc(m)}, the parameter "
                         f"{_desc(p)} needs the same shape, dtype and device ({where})")
    want = torch.Size(reduced_shape(p.shape, k))
    if (v.shape, v.dtype, v.device) != (want, p.dtype, p.device):
        raise ValueError(f"{PREFIX}: state does not fit the parameter: exp_avg_sq is {_desc(v)}, a parameter "
                         f"{_desc(p)} with K={k} needs {tuple(want)} of its dtype and device ({where})")
    if s.numel() != 1 or not s.is_floating_point():
        raise ValueError(f"{PREFIX}: the step counter must be a one-element float tensor, got {_desc(s)} ({where})")


def _check_no_sharing(params: list[Tensor], keep: list[int]) -> None:
    """Refuse two parameters that start at one address, or contiguous ones whose memory overlaps: both would
    be updated at once (by two kernel threads). Views that interleave without overlapping (column blocks
    of one weight) are not contiguous, so only their starts are compared."""
    spans = sorted((params[i].data_ptr(), params[i].data_ptr() + params[i].numel() * params[i].element_size()
                    if params[i].is_contiguous() else params[i].data_ptr() + 1, i) for i in keep)
    for (a0, a1, i), (b0, _, j) in zip(spans, spans[1:]):
        if b0 < a1 or a0 == b0:
            raise ValueError(f"{PREFIX}: tensors {min(i, j)} and {max(i, j)} of this call share memory (the same "
                             f"parameter passed twice?): {_desc(params[i])} and {_desc(params[j])}")


def check_state(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                state_steps: list[Tensor], dims: list[tuple[int, ...]]) -> list[int] | None:
    """Raise ValueError unless every tensor fits its parameter (see the module docstring, "Safety"): the
    fused paths index all five tensors by the parameter's shape. Returns the indices of the non-empty
    tensors, or None when none is empty."""
    lengths = [len(lst) for lst in (params, grads, exp_avgs, exp_avg_sqs, state_steps, dims)]
    if len(set(lengths)) != 1:
        raise ValueError(f"{PREFIX}: the lists differ in length (params, grads, exp_avgs, exp_avg_sqs, "
                         f"state_steps, dims: {lengths})")
    n, keep = len(params), []
    for i, (p, g, m, v, s, k) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs, state_steps, dims)):
        _check_one(p, g, m, v, s, k, f"tensor {i} of {n} in this call")
        if p.numel():
            keep.append(i)
    _check_no_sharing(params, keep)
    return None if len(keep) == n else keep


def signature(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
              state_steps: list[Tensor], dims: list[tuple[int, ...]]) -> tuple:
    """What the memory safety of the fused paths and the native kernel's choices depend on, read every step:
    parameters' and gradients' shape, dtype, CPU-ness and contiguity; exp_avg's and exp_avg_sq's byte
    size, CPU-ness and contiguity; the steps' byte size, dtype and CPU-ness; K; and every device when
    some tensor is not on the CPU. A state tensor changed in place to another shape of the same byte size
    on the same device is therefore not re-checked: the kernels still touch only its bytes.

    About 17 attribute reads per parameter (about 1.2 us on a busy 2-core machine; the native path read
    9 of them before these checks existed). Attribute reads, not the checks, are the cost, which is why
    this is not every tensor's full (shape, dtype, device)."""
    ps, gs = (params, grads), (exp_avgs, exp_avg_sqs)
    parts = [tuple(map(f, lst)) for lst in ps for f in (_SHAPE, _DTYPE, _CPU, _CONTIGUOUS)]
    parts += [tuple(map(f, lst)) for lst in gs for f in (_NBYTES, _CPU, _CONTIGUOUS)]
    parts += [tuple(map(_NBYTES, state_steps)), tuple(map(_DTYPE, state_steps)), tuple(map(_CPU, state_steps)),
              tuple(dims)]
    if not all(all(on_cpu) for on_cpu in (parts[2], parts[6], parts[9], parts[12])):
        parts += [tuple(map(_DEVICE, lst)) for lst in (*ps, *gs)]
    return tuple(parts)


def checked(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
            state_steps: list[Tensor], dims: list[tuple[int, ...]]) -> Checked:
    """:func:`check_state`, run once per :func:`signature`."""
    try:
        sig = signature(params, grads, exp_avgs, exp_avg_sqs, state_steps, dims)
        entry = _checked.get(sig)
    except (AttributeError, TypeError):  # not tensors, or a K that is not a tuple: check_state says which
        sig = entry = None
    if entry is None:
        entry = Checked(check_state(params, grads, exp_avgs, exp_avg_sqs, state_steps, dims))
        if sig is not None:
            if len(_checked) >= MAX_CHECKED:
                _checked.clear()
            _checked[sig] = entry
    return entry


def _leading(dims: tuple[int, ...]) -> bool:
    """Whether K is the first len(K) dims (e.g. fan_out, K = (0,), of an (out, in) weight)."""
    return dims == tuple(range(len(dims)))


def _mean_sq_leading(g: Tensor, dims: tuple[int, ...]) -> Tensor:
    """mean_K(G*G) for leading K of a contiguous G, as two reductions that inductor compiles well.

    Reducing the leading dims of a row-major (R, C) view, inductor's C++ walks it 16 columns at a time
    down all R rows, one cache line per row: 4x slower than streaming (2.2 ms for 4096 x 1024 on one
    core). Summing blocks of B rows first, (R/B, B, C) -> (R/B, C), then the R/B partial rows, keeps
    each block's lines in cache: 2-3x faster. Same sum, another order: fp rounding only.
    """
    rows = 1
    for d in dims:
        rows *= g.shape[d]
    row_bytes = g.numel() // rows * g.element_size()
    # Blocks of about 64 KiB (L1/L2-resident), a power of two that divides the rows (1: no blocking).
    block = next((b for b in (64, 32, 16, 8, 4, 2) if b * row_bytes <= 65536 and rows % b == 0 and rows > b), 1)
    sq = g * g
    if block > 1:
        partial = sq.reshape(rows // block, block, -1).sum(dim=1)
        total = partial.sum(dim=0)
    else:
        total = sq.reshape(rows, -1).sum(dim=0)
    return (total / rows).reshape(reduced_shape(g.shape, dims))


def clear_cache() -> None:
    """Forget checks, native plans, compiled graphs, fallback decisions and issued warnings (to time a cold
    compile; tests)."""
    _checked.clear()  # with the native kernel's plans, kept per signature
    _kernels.clear()
    _broken.clear()
    _warned.clear()


def _bucket_update(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                   state_steps: list[Tensor], coeffs: Tensor, dims: tuple[tuple[int, ...], ...],
                   maximize: bool) -> list[Tensor]:
    """One SlimAdam update of a bucket (tensors sharing device and dtype); the graph torch.compile traces.

    ``coeffs[i]`` holds tensor i's scalars for its incremented step (columns ``COLUMNS``), ``dims[i]`` its K.
    The step counters are incremented here, inside the graph, rather than by a separate foreach call.

    Returns the reduced-shape scales of the compressed tensors. Nobody needs them: returning them gives
    each a second user, which makes inductor compute it once into a small buffer rather than redo a
    sqrt and two divisions for every entry of the full-size update (1.2x faster kernel on a 1M-parameter
    GPT on one core).
    """
    for s in state_steps:
        s.add_(1)
    scales = []
    for i, (p, g, m, v, k) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs, dims)):
        c = coeffs[i]
        if maximize:
            g = -g
        # lerp(M, G, w) written out as eager lerp computes it for w < 0.5 (beta1 > 0.5); inductor's lerp
        # evaluates both of lerp's branches per entry.
        m.add_(c[W1] * (g - m))
        if not k:
            term = (g * c[W2]) * g  # addcmul's order, as the for-loop and AdamW (see the module docstring)
        elif _leading(k) and len(k) < g.dim() and g.is_contiguous():
            term = _mean_sq_leading(g, k) * c[W2]
        else:
            term = (g * g).mean(dim=k, keepdim=True) * c[W2]  # fused into the reduction: no full-size G*G
        v.mul_(c[B2]).add_(term)
        scale = c[NEG_STEP] / (v.sqrt() / c[BC2_SQRT] + c[EPS])  # reduced shape, broadcast over K below
        if k:
            scales.append(scale)
        p.mul_(c[DECAY]).add_(m * scale)
    return scales


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype eager torch computes a ``dtype`` tensor op in (and so rounds Python scalars to)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def coefficient_table(steps: list[Tensor], hp: AdamHyper, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The (len(steps), len(COLUMNS)) table of per-tensor scalars for the step about to be taken.

    ``steps`` are the counters before this step's increment. The arithmetic is ``_single_tensor_slimadam``'s,
    in Python floats, so the kernel sees the scalars the for-loop uses. Tensors at the same step share
    one row's computation.
    """
    rows: dict[float, list[float]] = {}
    table = []
    for t in torch.stack(steps).tolist() if len(steps) > 1 else [steps[0].item()]:
        t += 1  # exact, as float32 step + 1 is, below 2**24 steps
        row = rows.get(t)
        if row is None:
            bias_correction1 = 1 - hp.beta1**t
            bias_correction2 = 1 - hp.beta2**t
            row = rows[t] = [1 - hp.lr * hp.weight_decay, 1 - hp.beta1, hp.beta2, 1 - hp.beta2,
                             -(hp.lr / bias_correction1), bias_correction2**0.5, hp.eps]
        table.append(row)
    return torch.tensor(table, dtype=opmath_dtype(dtype), device=device)


def _warn_once(msg: str) -> None:
    if msg not in _warned:
        _warned.add(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=5)


def _compile_new() -> Callable:
    """A compiled copy of ``_bucket_update`` with its own code object.

    Dynamo keeps its graph cache, and its recompile limit (8 by default), per code object. Buckets sharing
    one code object would count as recompiles of each other, and past the limit dynamo silently runs
    eager. A private code object per bucket structure gives each its own cache.
    """
    name = f"_bucket_update_{len(_kernels)}"
    code = _bucket_update.__code__.replace(co_name=name)
    fn = types.FunctionType(code, _bucket_update.__globals__, name)
    # size_asserts off: dynamo's guards already check every input's shape and strides before each call.
    return torch.compile(fn, fullgraph=True, dynamic=False, options={"size_asserts": False})


def _native_split(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                  state_steps: list[Tensor], dims: list[tuple[int, ...]], hp: AdamHyper, scratch: dict) -> list[int]:
    """Run the hand-written CPU kernel on every tensor it takes; return the indices of the rest."""
    from slimbench.optim import _native

    try:
        return _native.step_where_possible(params, grads, exp_avgs, exp_avg_sqs, state_steps, dims, hp,
                                           scratch=scratch)
    except _native.NativeUnavailable as e:
        _warn_once(f"SlimAdam(fused=True): the native CPU kernel is unavailable ({e}); using torch.compile instead")
        return list(range(len(params)))


def _fused_slimadam(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
                    exp_avg_sqs: list[Tensor], state_steps: list[Tensor],
                    dims: list[tuple[int, ...]], hp: AdamHyper, backend: str = "auto") -> None:
    """SlimAdam fused: the native CPU kernel where it applies (backend "auto"), else one compiled graph
    per (device, dtype) bucket (see the module docstring). Raises ValueError, having updated nothing,
    when a tensor does not fit its parameter (:func:`check_state`)."""
    if backend not in FUSED_BACKENDS:
        raise ValueError(f"unknown fused backend {backend!r}; expected one of {FUSED_BACKENDS}")
    entry = checked(params, grads, exp_avgs, exp_avg_sqs, state_steps, dims)
    if entry.keep is not None:  # zero-size tensors: nothing to update
        if not entry.keep:
            return
        params, grads, exp_avgs, exp_avg_sqs, state_steps, dims = (
            [lst[i] for i in entry.keep] for lst in (params, grads, exp_avgs, exp_avg_sqs, state_steps, dims))
    if backend == "auto" and not (torch.compiler.is_compiling() or is_in_torch_dispatch_mode()):
        rest = _native_split(params, grads, exp_avgs, exp_avg_sqs, state_steps, dims, hp, entry.native)
        if not rest:
            return
        if len(rest) < len(params):
            params, grads, exp_avgs, exp_avg_sqs, state_steps, dims = (
                [lst[i] for i in rest] for lst in (params, grads, exp_avgs, exp_avg_sqs, state_steps, dims))
    keys = [(p.device, p.dtype) for p in params]
    if all(key == keys[0] for key in keys):  # the usual case: no bucketing work
        buckets = {keys[0]: (params, grads, exp_avgs, exp_avg_sqs, state_steps, dims)}
    else:
        buckets = group_for_foreach(params, grads, exp_avgs, exp_avg_sqs, state_steps, dims, keys=keys)
    for (device, dtype), (b_params, b_grads, b_exp_avgs, b_exp_avg_sqs, b_steps, b_dims) in buckets.items():
        b_dims = tuple(b_dims)
        # Inductor's C++ fixes the thread count when it generates code: a change of threads is a new graph.
        key = (device, dtype, hp.maximize, b_dims, tuple(p.shape for p in b_params), torch.get_num_threads())
        if key not in _broken and device.type not in COMPILABLE_DEVICES:
            _broken[key] = f"torch.compile does not support device type {device.type!r}"
        if key in _broken:
            _warn_once(f"SlimAdam(fused=True): {_broken[key]}; using the foreach path instead")
            _multi_tensor_slimadam(b_params, b_grads, b_exp_avgs, b_exp_avg_sqs, b_steps, list(b_dims), hp)
            continue
        coeffs = coefficient_table(b_steps, hp, dtype, device)
        args = (b_params, b_grads, b_exp_avgs, b_exp_avg_sqs, b_steps, coeffs, b_dims, hp.maximize)
        if torch.compiler.is_compiling() or is_in_torch_dispatch_mode():
            # Inside the caller's torch.compile, dynamo traces the plain function into the caller's graph.
            # Under a TorchDispatchMode (e.g. slimbench.memory.profile's tracker) compiled code cannot run,
            # so the same maths runs eagerly, op by op.
            _bucket_update(*args)
            continue
        kernel = _kernels.get(key)
        if kernel is not None:
            kernel(*args)
            continue
        kernel = _compile_new()
        try:
            kernel(*args)  # compiles: dynamo and inductor finish compiling before anything is updated
        except Exception as e:  # noqa: BLE001 -- any compile failure means "fall back", never a crash
            reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            _broken[key] = f"could not compile on {device.type} ({type(e).__name__}: {reason})"
            _warn_once(f"SlimAdam(fused=True): {_broken[key]}; using the foreach path instead")
            _multi_tensor_slimadam(b_params, b_grads, b_exp_avgs, b_exp_avg_sqs, b_steps, list(b_dims), hp)
            continue
        _kernels[key] = kernel
