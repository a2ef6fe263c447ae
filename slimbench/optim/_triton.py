r"""Fused SlimAdam in one hand-written Triton kernel per (device, dtype) bucket (``fused_backend="triton"``).

Why: on CUDA the compiled backend is whatever inductor makes of the functional step, which reads G once
for the reduction over K and again for the update. Here the reduction and the update are one program,
and a whole bucket of tensors is one launch (torch's multi_tensor_apply idea): per-tensor metadata is
packed into small int64 tensors and each program finds its tensor by a binary search over the tensors'
first program ids.

Layout. Each tensor is viewed as (O, R, I) with K the middle R dims (K must be one contiguous range of
dims, as for the native CPU kernel), so V has O*I entries. Three kinds of program:

  kind 0, K = ()        BLOCK_E entries of the flat tensor: AdamW's elementwise update.
  kind 1, I == 1        (K trailing: fan_in, the embedding dim, both / all dims) ROWS rows of (O, R):
                        sum G^2 over each row, update V's entry, update the rows. When R <= BLOCK_R the
                        tile is loaded once and everything happens in registers (G read once); a longer
                        row is summed in chunks, then updated in chunks (G's second read mostly from L2).
  kind 2, I > 1         (K leading: fan_out, or a middle range) BLOCK_C columns of one o: sum G^2 down
                        the R rows, update the BLOCK_C entries of V, then update the column block. When
                        R <= BLOCK_RR the block is one tile in registers; otherwise G is read twice.

Pointers: every p, G, M, V of a bucket is addressed as an element offset from one base tensor (the
bucket's first parameter), so the metadata is plain int64 and the kernel has a fixed argument list
whatever the bucket's size. The offsets are rebuilt every step (gradients are new tensors after
``zero_grad(set_to_none=True)``); the shapes, kinds and program starts are cached per call signature.

Numbers (the contract of :mod:`slimbench.optim._fused`): arithmetic in fp32 for fp32, bf16 and fp16
storage, each stored value rounded once (round to nearest even). K = () adds ((1-b2) G) G to V, the
order of AdamW's addcmul; otherwise the sum of squares over K is formed in fp32, so past fp32's range it
is +inf; a +inf V freezes the entries sharing it (weight decay only), a NaN in G makes them NaN on the same
step. lr, betas, eps, weight decay and both bias corrections reach the kernel as one small fp32 table
(the compiled backend's :func:`~slimbench.optim._compiled.coefficient_table`, computed in Python double as
the for-loop does), so an lr schedule never recompiles; a launch is specialised only to its dtype, its
block sizes (chosen from the bucket's shapes), ``maximize`` and the search depth (log2 of the tensor count).

What it takes (:func:`can_take`): float32, bfloat16 or float16 tensors on CUDA, or on the CPU when Triton's
interpreter is on (``TRITON_INTERPRET=1`` when the kernel is first used: tests); p, G, M, V contiguous;
K a contiguous range of dims; not a tensor that would be a few long serial programs (trailing K over more
than 2^16 entries in fewer than 8 rows, e.g. K = all dims of a big weight: the compiled backend splits that
reduction across programs). The rest goes to the next backend.

Not measured on a GPU: the kernel has run only under the interpreter on CPU tensors, and been compiled
ahead of time to an sm_90 cubin on a CPU machine (tests/test_triton.py). The block sizes are first guesses, and a few huge fan_out tensors give few programs (one per BLOCK_C
columns); a split-R variant is left until it can be timed.
"""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from slimbench.optim._backends import AdamHyper, Lists, warn_once
from slimbench.optim._checks import checked
from slimbench.optim._native import native_view as view  # (O, R, I); None: K not a range

__all__ = ["TRITON", "TRITON_STRICT", "available", "can_take", "interpreting", "step_bucket"]

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
META = 8  # int64 fields per tensor: p, g, m, v offsets; O, R, I; kind
# Block sizes: first guesses, not tuned on a GPU. Powers of two; tests shrink them to reach every loop.
TILE = 2048  # entries per program tile (kinds 1 and 2)
BLOCK_E = 1024  # most entries per program of kind 0
MAX_BLOCK_R, MAX_BLOCK_C, MIN_BLOCK = 1024, 128, 16  # row chunk (kind 1), column block (kind 2), floor
# No fused multiply-add contraction: every op rounded as written, as the for-loop's torch ops and the
# interpreter the tests run (numpy) do; the step is memory-bound, so FMAs would buy nothing.
COMPILE_OPTIONS = {"enable_fp_fusion": False}
SERIAL_ENTRIES, SERIAL_ROWS = 1 << 16, 8  # see can_take: K = all dims of big tensors goes elsewhere

tl: Any = None  # triton.language, bound when the kernel is first built (the kernel body resolves it here)
_kernels: dict[bool, Any] = {}  # interpret? -> the jit (or interpreted) kernel
_import_error: str | None = None
specializations: set[tuple] = set()  # every (interpret, dtype, constexprs) launched: what a compile depends on
_broken: dict[tuple, str] = {}  # (device, dtype, constexprs) whose compile failed -> why


def _slimadam_kernel(base, meta, starts, coeffs, n_tensors, LOG_N: tl.constexpr, MAXIMIZE: tl.constexpr,
                     BLOCK_E: tl.constexpr, ROWS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_RR: tl.constexpr,
                     BLOCK_C: tl.constexpr):
    """One program: find its tensor (binary search over ``starts``), then one block of that tensor."""
    pid = tl.program_id(0).to(tl.int64)
    lo = pid * 0
    hi = lo + n_tensors
    for _ in tl.static_range(LOG_N):  # invariant: starts[lo] <= pid < starts[hi]
        mid = (lo + hi) // 2
        go = pid >= tl.load(starts + mid)
        lo = tl.where(go, mid, lo)
        hi = tl.where(go, hi, mid)
    t = lo
    j = pid - tl.load(starts + t)
    row = meta + t * 8  # META fields
    p_ptr = base + tl.load(row + 0)
    g_ptr = base + tl.load(row + 1)
    m_ptr = base + tl.load(row + 2)
    v_ptr = base + tl.load(row + 3)
    O = tl.load(row + 4)
    R = tl.load(row + 5)
    I = tl.load(row + 6)
    kind = tl.load(row + 7)
    c = coeffs + t * 7  # slimbench.optim._compiled.COLUMNS
    decay = tl.load(c + 0)
    w1 = tl.load(c + 1)
    b2 = tl.load(c + 2)
    w2 = tl.load(c + 3)
    neg_step = tl.load(c + 4)
    bc2 = tl.load(c + 5)
    eps = tl.load(c + 6)
    out_ty = base.dtype.element_ty
    # Each branch names its values apart: Triton requires a name assigned in two sibling branches to have
    # one type in both, and the kinds' tiles differ in shape. Sums are tl.reduce with Triton's own add
    # combiner, not tl.sum: tl.sum is a jit function built when triton.language is imported, in whatever
    # mode was on then, so an interpreted kernel calling it fails when triton was imported first (by
    # inductor, another test); the interpreter sums this combiner with numpy, the compiler as tl.sum does.
    if kind == 0:  # K = (): AdamW, elementwise
        e_offs = j * BLOCK_E + tl.arange(0, BLOCK_E)
        e_mask = e_offs < O
        e_g = tl.load(g_ptr + e_offs, mask=e_mask, other=0.0).to(tl.float32)
        if MAXIMIZE:
            e_g = -e_g
        e_m0 = tl.load(m_ptr + e_offs, mask=e_mask, other=0.0).to(tl.float32)
        e_m = e_m0 + w1 * (e_g - e_m0)
        e_v = tl.load(v_ptr + e_offs, mask=e_mask, other=0.0).to(tl.float32) * b2 + (w2 * e_g) * e_g  # addcmul's order
        e_p = tl.load(p_ptr + e_offs, mask=e_mask, other=0.0).to(tl.float32)
        e_p = e_p * decay + neg_step * tl.div_rn(e_m, tl.div_rn(tl.sqrt_rn(e_v), bc2) + eps)
        tl.store(m_ptr + e_offs, e_m.to(out_ty), mask=e_mask)
        tl.store(v_ptr + e_offs, e_v.to(out_ty), mask=e_mask)
        tl.store(p_ptr + e_offs, e_p.to(out_ty), mask=e_mask)
    elif kind == 1:  # K trailing: ROWS rows, each reduced over its R contiguous entries
        rows = j * ROWS + tl.arange(0, ROWS)
        rmask = rows < O
        rcols = tl.arange(0, BLOCK_R)
        if R <= BLOCK_R:  # the whole tile in registers: G read once
            a_mask = rmask[:, None] & (rcols[None, :] < R)
            a_offs = rows[:, None] * R + rcols[None, :]
            a_g = tl.load(g_ptr + a_offs, mask=a_mask, other=0.0).to(tl.float32)
            if MAXIMIZE:
                a_g = -a_g
            a_sum = tl.reduce(a_g * a_g, 1, tl.standard._sum_combine)
            a_v = tl.load(v_ptr + rows, mask=rmask, other=0.0).to(tl.float32) * b2 + w2 * tl.div_rn(a_sum, R.to(tl.float32))
            tl.store(v_ptr + rows, a_v.to(out_ty), mask=rmask)
            a_scale = tl.div_rn(neg_step, tl.div_rn(tl.sqrt_rn(a_v), bc2) + eps)
            a_m0 = tl.load(m_ptr + a_offs, mask=a_mask, other=0.0).to(tl.float32)
            a_m = a_m0 + w1 * (a_g - a_m0)
            a_p = tl.load(p_ptr + a_offs, mask=a_mask, other=0.0).to(tl.float32) * decay + a_m * a_scale[:, None]
            tl.store(m_ptr + a_offs, a_m.to(out_ty), mask=a_mask)
            tl.store(p_ptr + a_offs, a_p.to(out_ty), mask=a_mask)
        else:  # long rows: sum in chunks, then update in chunks
            b_sum = tl.full((ROWS,), 0.0, tl.float32)
            for r0 in range(0, R, BLOCK_R):
                b_mask = rmask[:, None] & ((r0 + rcols)[None, :] < R)
                b_g = tl.load(g_ptr + rows[:, None] * R + (r0 + rcols)[None, :], mask=b_mask, other=0.0).to(tl.float32)
                b_sum += tl.reduce(b_g * b_g, 1, tl.standard._sum_combine)
            b_v = tl.load(v_ptr + rows, mask=rmask, other=0.0).to(tl.float32) * b2 + w2 * tl.div_rn(b_sum, R.to(tl.float32))
            tl.store(v_ptr + rows, b_v.to(out_ty), mask=rmask)
            b_scale = tl.div_rn(neg_step, tl.div_rn(tl.sqrt_rn(b_v), bc2) + eps)
            for r1 in range(0, R, BLOCK_R):
                bu_mask = rmask[:, None] & ((r1 + rcols)[None, :] < R)
                bu_offs = rows[:, None] * R + (r1 + rcols)[None, :]
                bu_g = tl.load(g_ptr + bu_offs, mask=bu_mask, other=0.0).to(tl.float32)
                if MAXIMIZE:
                    bu_g = -bu_g
                bu_m0 = tl.load(m_ptr + bu_offs, mask=bu_mask, other=0.0).to(tl.float32)
                bu_m = bu_m0 + w1 * (bu_g - bu_m0)
                bu_p = tl.load(p_ptr + bu_offs, mask=bu_mask, other=0.0).to(tl.float32) * decay + bu_m * b_scale[:, None]
                tl.store(m_ptr + bu_offs, bu_m.to(out_ty), mask=bu_mask)
                tl.store(p_ptr + bu_offs, bu_p.to(out_ty), mask=bu_mask)
    else:  # K leading or middle: BLOCK_C columns of slab o, reduced down its R rows
        n_cb = (I + BLOCK_C - 1) // BLOCK_C
        o = j // n_cb
        ccols = (j - o * n_cb) * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = ccols < I
        slab = o * R * I
        rr = tl.arange(0, BLOCK_RR)
        if R <= BLOCK_RR:  # the whole column block in registers: G read once
            c_mask = (rr < R)[:, None] & cmask[None, :]
            c_offs = slab + rr[:, None] * I + ccols[None, :]
            c_g = tl.load(g_ptr + c_offs, mask=c_mask, other=0.0).to(tl.float32)
            if MAXIMIZE:
                c_g = -c_g
            c_sum = tl.reduce(c_g * c_g, 0, tl.standard._sum_combine)
            c_v = tl.load(v_ptr + o * I + ccols, mask=cmask, other=0.0).to(tl.float32) * b2 + w2 * tl.div_rn(c_sum, R.to(tl.float32))
            tl.store(v_ptr + o * I + ccols, c_v.to(out_ty), mask=cmask)
            c_scale = tl.div_rn(neg_step, tl.div_rn(tl.sqrt_rn(c_v), bc2) + eps)
            c_m0 = tl.load(m_ptr + c_offs, mask=c_mask, other=0.0).to(tl.float32)
            c_m = c_m0 + w1 * (c_g - c_m0)
            c_p = tl.load(p_ptr + c_offs, mask=c_mask, other=0.0).to(tl.float32) * decay + c_m * c_scale[None, :]
            tl.store(m_ptr + c_offs, c_m.to(out_ty), mask=c_mask)
            tl.store(p_ptr + c_offs, c_p.to(out_ty), mask=c_mask)
        else:  # column partial sums down the rows, then the update
            d_sum = tl.full((BLOCK_C,), 0.0, tl.float32)
            for r2 in range(0, R, BLOCK_RR):
                d_mask = ((r2 + rr) < R)[:, None] & cmask[None, :]
                d_g = tl.load(g_ptr + slab + (r2 + rr)[:, None] * I + ccols[None, :], mask=d_mask, other=0.0).to(tl.float32)
                d_sum += tl.reduce(d_g * d_g, 0, tl.standard._sum_combine)
            d_v = tl.load(v_ptr + o * I + ccols, mask=cmask, other=0.0).to(tl.float32) * b2 + w2 * tl.div_rn(d_sum, R.to(tl.float32))
            tl.store(v_ptr + o * I + ccols, d_v.to(out_ty), mask=cmask)
            d_scale = tl.div_rn(neg_step, tl.div_rn(tl.sqrt_rn(d_v), bc2) + eps)
            for r3 in range(0, R, BLOCK_RR):
                du_mask = ((r3 + rr) < R)[:, None] & cmask[None, :]
                du_offs = slab + (r3 + rr)[:, None] * I + ccols[None, :]
                du_g = tl.load(g_ptr + du_offs, mask=du_mask, other=0.0).to(tl.float32)
                if MAXIMIZE:
                    du_g = -du_g
                du_m0 = tl.load(m_ptr + du_offs, mask=du_mask, other=0.0).to(tl.float32)
                du_m = du_m0 + w1 * (du_g - du_m0)
                du_p = tl.load(p_ptr + du_offs, mask=du_mask, other=0.0).to(tl.float32) * decay + du_m * d_scale[None, :]
                tl.store(m_ptr + du_offs, du_m.to(out_ty), mask=du_mask)
                tl.store(p_ptr + du_offs, du_p.to(out_ty), mask=du_mask)


def interpreting() -> bool:
    """Whether Triton's interpreter is on (TRITON_INTERPRET, read as Triton reads it)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def available() -> str | None:
    """None when Triton imports, else why not (remembered)."""
    global tl, _import_error
    if tl is not None or _import_error is not None:
        return _import_error
    try:
        import triton.language as language
    except Exception as e:  # noqa: BLE001 -- any import failure means "not available"
        _import_error = f"Triton does not import ({type(e).__name__}: {str(e).strip()[:120]})"
        return _import_error
    tl = language
    return None


def kernel() -> Any:
    """The kernel for the current mode: Triton decides "interpreted or compiled" when a function is
    decorated, so it is decorated once per mode, when first needed (tests switch TRITON_INTERPRET on)."""
    mode = interpreting()
    k = _kernels.get(mode)
    if k is None:
        if available() is not None:
            raise RuntimeError(f"SlimAdam(fused=True): {_import_error}")
        import triton

        k = _kernels[mode] = triton.jit(_slimadam_kernel, do_not_specialize=["n_tensors"])
    return k


def _device_ok(t: Tensor) -> bool:
    return t.is_cuda or (t.is_cpu and interpreting())


def can_take(param: Tensor, grad: Tensor | None, dims: tuple[int, ...]) -> bool:
    """Whether the kernel can update ``param`` with K = ``dims`` (see the module docstring); ``grad`` None
    checks only what is fixed per parameter."""
    if param.dtype not in DTYPES or not _device_ok(param) or not param.is_contiguous():
        return False
    if grad is not None and not grad.is_contiguous():
        return False
    shape = view(param.shape, dims)
    if shape is None:
        return False
    o, r, i = shape
    return not (dims and i == 1 and o < SERIAL_ROWS and r > SERIAL_ENTRIES)


def _pow2(n: int, lo: int, hi: int) -> int:
    """The power of two >= n, clamped to [lo, hi]."""
    return max(lo, min(hi, 1 << max(0, n - 1).bit_length()))


def _plan(shapes: list[tuple[int, int, int]], dims: list[tuple[int, ...]], maximize: bool) -> tuple[list, list, dict]:
    """Static metadata of a bucket: per tensor (O, R, I, kind), its first program id, the constexprs."""
    rows = [(o, r, i, 0 if not k else (1 if i == 1 else 2)) for (o, r, i), k in zip(shapes, dims)]
    r1 = max((r for _, r, _, kind in rows if kind == 1), default=1)
    i2 = max((i for _, _, i, kind in rows if kind == 2), default=1)
    r2 = max((r for _, r, _, kind in rows if kind == 2), default=1)
    e = max((o for o, _, _, kind in rows if kind == 0), default=1)
    block_r = _pow2(r1, MIN_BLOCK, MAX_BLOCK_R)
    block_c = _pow2(i2, MIN_BLOCK, MAX_BLOCK_C)
    const = dict(LOG_N=max(0, len(rows) - 1).bit_length(), MAXIMIZE=bool(maximize),
                 BLOCK_E=_pow2(e, MIN_BLOCK, BLOCK_E), ROWS=max(1, TILE // block_r), BLOCK_R=block_r,
                 BLOCK_RR=_pow2(r2, 1, TILE // block_c), BLOCK_C=block_c)
    starts, at = [], 0
    for o, r, i, kind in rows:
        starts.append(at)
        at += (-(-o // const["BLOCK_E"]) if kind == 0 else
               -(-o // const["ROWS"]) if kind == 1 else o * -(-i // block_c))
    starts.append(at)
    return rows, starts, const


def _launch(lists: Lists, hp: AdamHyper, scratch: dict) -> bool:
    """One launch for a bucket sharing device and dtype; False (nothing updated) if it cannot compile."""
    from slimbench.optim._compiled import coefficient_table  # the for-loop's scalars, in one table

    params, grads, exp_avgs, exp_avg_sqs, steps, dims = lists
    base = params[0]
    device, dtype, size = base.device, base.dtype, base.element_size()
    static = scratch.get("static")
    if static is None or static[0] != hp.maximize:
        rows, starts, const = _plan([view(p.shape, k) for p, k in zip(params, dims)], list(dims), hp.maximize)
        static = scratch["static"] = (hp.maximize, rows, torch.tensor(starts, dtype=torch.int64, device=device),
                                      const, starts[-1])
    _, rows, starts, const, n_programs = static
    origin = base.data_ptr()
    meta = []
    for tensors, row in zip(zip(params, grads, exp_avgs, exp_avg_sqs), rows):
        for t in tensors:
            delta = t.data_ptr() - origin
            if delta % size:  # storage not aligned to the element size: cannot be addressed from base
                return False
            meta.append(delta // size)
        meta += row
    meta_t = torch.tensor(meta, dtype=torch.int64).to(device, non_blocking=True)
    coeffs = coefficient_table(steps, hp, dtype, torch.device("cpu")).to(device, non_blocking=True)
    key = (device, dtype, tuple(sorted(const.items())))
    if key in _broken:
        return False
    specializations.add((interpreting(), dtype, tuple(sorted(const.items()))))
    try:
        kernel()[(n_programs,)](base, meta_t, starts, coeffs, len(params), **const, **COMPILE_OPTIONS)
    except Exception as e:  # noqa: BLE001 -- a compile failure means "the next backend", never a crash
        if interpreting():
            raise  # under the interpreter a failure is a bug in this file, not a missing toolchain
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        _broken[key] = f"the Triton kernel could not run on {device} ({type(e).__name__}: {reason})"
        warn_once(f"SlimAdam(fused=True): {_broken[key]}; using the next backend instead")
        return False
    torch._foreach_add_(steps, 1)
    return True


def _ready(p: Tensor, g: Tensor, m: Tensor, v: Tensor, s: Tensor) -> bool:
    return g.is_contiguous() and m.is_contiguous() and v.is_contiguous() and s.numel() == 1


def step_lists(lists: Lists, hp: AdamHyper, scratch: dict, cpu_ok: bool = True) -> list[int]:
    """Update the tensors the kernel takes, one launch per (device, dtype); return the others' indices.
    ``cpu_ok`` False leaves CPU tensors alone even under the interpreter (``fused_backend="auto"``: the
    native kernel's). The tensors must already fit their parameters (:func:`slimbench.optim._checks.check_state`)."""
    params, grads, exp_avgs, exp_avg_sqs, steps, dims = lists
    scratch = scratch.setdefault(cpu_ok, {})
    groups = scratch.get("groups")
    if groups is None:
        take = [i for i in range(len(params)) if (cpu_ok or not params[i].is_cpu)
                and can_take(params[i], grads[i], dims[i])
                and _ready(params[i], grads[i], exp_avgs[i], exp_avg_sqs[i], steps[i])]
        by_key: dict[tuple, list[int]] = {}
        for i in take:
            by_key.setdefault((params[i].device, params[i].dtype), []).append(i)
        groups = scratch["groups"] = list(by_key.values())
        taken = set(take)
        scratch["rest"] = [i for i in range(len(params)) if i not in taken]
    rest = list(scratch["rest"])
    for n, idx in enumerate(groups):
        sub = lists if len(idx) == len(params) else tuple([lst[i] for i in idx] for lst in lists)
        if not _launch(sub, hp, scratch.setdefault(n, {})):  # type: ignore[arg-type]
            rest += idx
    return sorted(rest)


def step_bucket(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                steps: list[Tensor], dims: list[tuple[int, ...]], hp: AdamHyper) -> list[int]:
    """The narrow entry point: check the state (:func:`~slimbench.optim._checks.check_state`; a ValueError
    before anything is updated), then update what the kernel takes; returns the indices it left."""
    entry = checked(params, grads, exp_avgs, exp_avg_sqs, steps, dims)
    idx = list(range(len(params))) if entry.keep is None else entry.keep
    if not idx:
        return []
    lists: Lists = (params, grads, exp_avgs, exp_avg_sqs, steps, dims)
    sub = lists if len(idx) == len(params) else tuple([lst[i] for i in idx] for lst in lists)
    left = step_lists(sub, hp, entry.scratch.setdefault("triton-direct", {}))  # type: ignore[arg-type]
    return [idx[i] for i in left]


class _Triton:
    """The Triton backend. ``strict`` (``fused_backend="triton"``): a CPU tensor without the interpreter,
    or no Triton at all, is a one-line error; otherwise (``"auto"``) it takes only CUDA tensors and leaves
    everything to the next backend, with one warning, when Triton does not import."""

    name = "triton"

    def __init__(self, strict: bool) -> None:
        self.strict = strict

    def takes(self, p: Tensor, k: tuple[int, ...]) -> bool:
        return (p.is_cuda or self.strict) and can_take(p, None, k)

    def step(self, lists: Lists, hp: AdamHyper, scratch: dict) -> list[int]:
        params = lists[0]
        everything = list(range(len(params)))
        if torch.compiler.is_compiling() or is_in_torch_dispatch_mode():
            return everything
        if self.strict:
            if any(p.is_cpu for p in params) and not interpreting():
                raise RuntimeError("SlimAdam(fused_backend='triton'): CPU tensors need Triton's interpreter "
                                   "(set TRITON_INTERPRET=1 before triton is imported), or use fused_backend='auto'")
            if available() is not None:
                raise RuntimeError(f"SlimAdam(fused_backend='triton'): {_import_error}; "
                                   "pip install 'slimbench[gpu]' or use fused_backend='auto'")
        elif not any(p.is_cuda for p in params):
            return everything
        elif available() is not None:
            warn_once(f"SlimAdam(fused=True): {_import_error}; the CUDA tensors go to the next backend")
            return everything
        return step_lists(lists, hp, scratch, cpu_ok=self.strict)


TRITON = _Triton(strict=False)
TRITON_STRICT = _Triton(strict=True)
