r"""The torch.compile fused backend: one compiled graph per (device, dtype) bucket.

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
"""
from __future__ import annotations

import types
from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from slimbench.optim._backends import Lists, warn_once
from slimbench.optim._functional import AdamHyper, group_for_foreach
from slimbench.optim._reduce import mean_sq_graph

# Columns of the coefficient table, one row per tensor of a bucket.
COLUMNS = ("decay", "one_minus_beta1", "beta2", "one_minus_beta2", "neg_step_size", "bias_correction2_sqrt", "eps")
DECAY, W1, B2, W2, NEG_STEP, BC2_SQRT, EPS = range(len(COLUMNS))

COMPILABLE_DEVICES = ("cpu", "cuda", "xpu")

# Bucket structure -> compiled graph. Key: (device, dtype, maximize, dims and shape per tensor, threads).
_kernels: dict[tuple, Callable] = {}
_broken: dict[tuple, str] = {}  # structures that could not compile -> reason; the next backend runs them


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
        else:
            term = mean_sq_graph(g, k) * c[W2]  # the seam's traced form (slimbench.optim._reduce)
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


class _Compiled:
    """Takes every tensor on a device inductor compiles for; a bucket it cannot compile is left to the next
    backend (foreach) with one warning per distinct reason."""

    name = "compile"

    def takes(self, p: Tensor, k: tuple[int, ...]) -> bool:
        return p.device.type in COMPILABLE_DEVICES

    def step(self, lists: Lists, hp: AdamHyper, scratch: dict) -> list[int]:
        params = lists[0]
        keys = [(p.device, p.dtype) for p in params]
        if all(key == keys[0] for key in keys):  # the usual case: no bucketing work
            buckets = {keys[0]: (*lists, list(range(len(params))))}
        else:
            buckets = group_for_foreach(*lists, list(range(len(params))), keys=keys)
        rest: list[int] = []
        for (device, dtype), (b_params, b_grads, b_exp_avgs, b_exp_avg_sqs, b_steps, b_dims, b_idx) in buckets.items():
            if not self._bucket(device, dtype, b_params, b_grads, b_exp_avgs, b_exp_avg_sqs, b_steps, tuple(b_dims), hp):
                rest += b_idx
        return sorted(rest)

    @staticmethod
    def _bucket(device: torch.device, dtype: torch.dtype, b_params: list[Tensor], b_grads: list[Tensor],
                b_exp_avgs: list[Tensor], b_exp_avg_sqs: list[Tensor], b_steps: list[Tensor],
                b_dims: tuple[tuple[int, ...], ...], hp: AdamHyper) -> bool:
        """Step one bucket; False (having updated nothing) when it must go to the next backend."""
        # Inductor's C++ fixes the thread count when it generates code: a change of threads is a new graph.
        key = (device, dtype, hp.maximize, b_dims, tuple(p.shape for p in b_params), torch.get_num_threads())
        if key not in _broken and device.type not in COMPILABLE_DEVICES:
            _broken[key] = f"torch.compile does not support device type {device.type!r}"
        if key in _broken:
            warn_once(f"SlimAdam(fused=True): {_broken[key]}; using the foreach path instead")
            return False
        coeffs = coefficient_table(b_steps, hp, dtype, device)
        args = (b_params, b_grads, b_exp_avgs, b_exp_avg_sqs, b_steps, coeffs, b_dims, hp.maximize)
        if torch.compiler.is_compiling() or is_in_torch_dispatch_mode():
            # Inside the caller's torch.compile, dynamo traces the plain function into the caller's graph.
            # Under a TorchDispatchMode (e.g. slimbench.memory.profile's tracker) compiled code cannot run,
            # so the same maths runs eagerly, op by op.
            _bucket_update(*args)
            return True
        kernel = _kernels.get(key)
        if kernel is not None:
            kernel(*args)
            return True
        kernel = _compile_new()
        try:
            kernel(*args)  # compiles: dynamo and inductor finish compiling before anything is updated
        except Exception as e:  # noqa: BLE001 -- any compile failure means "fall back", never a crash
            reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            _broken[key] = f"could not compile on {device.type} ({type(e).__name__}: {reason})"
            warn_once(f"SlimAdam(fused=True): {_broken[key]}; using the foreach path instead")
            return False
        _kernels[key] = kernel
        return True


COMPILED = _Compiled()
