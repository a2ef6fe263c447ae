r"""Fused SlimAdam on CPU: one hand-written C kernel for a whole bucket of tensors.

Why not only torch.compile: inductor will not fuse a reduction over K with the elementwise update that
consumes it, so the compiled step reads G twice from memory and allocates its partial sums; on CPU it
stays 1.02-1.22x slower than torch's fused AdamW. The step SlimAdam needs is simple enough to write by
hand (``_native_kernel.c``): each tensor is viewed as (O, R, I) with K the middle R dims, and each work
item reduces G*G over a row (K trailing, e.g. fan_in) or a block of columns (K leading, e.g. fan_out)
and immediately updates that row or block while it is still in cache (with one thread, consecutive column
blocks are pipelined: one block's update interleaved with the next one's sums). With several threads, the blocks
of a fan_out gradient too large for cache are shared by the whole team (rows split between threads).
Per parameter of n entries of b bytes it moves 5nb (p, G, M read; p, M written) plus the reduced V,
against fused AdamW's 7nb, and its only heap allocation is two scalars per tensor per call (no
tensor-sized transient at all).

Build and cache (:mod:`slimbench.optim._native_build`): the C file is compiled on first use with the
system C compiler (``$CC``, else ``cc``/``gcc``; ``-O3 -march=native -fopenmp``, under a second) into
``$SLIMBENCH_CACHE/kernels`` (default ``~/.cache/slimbench/kernels``), a private directory, and is loaded
only after its owner, mode and recorded sha256 are checked. OpenMP comes from the libgomp torch has already
loaded; the kernel runs with ``torch.get_num_threads()`` threads and never starts a thread team with one.

Trust: :mod:`slimbench.optim._fused` checks every tensor against its parameter before calling here (shape,
dtype, device, K); this module plans only from those shapes, and the kernel checks the plan against the
shapes before touching memory (a negative return code, raised here).

Which tensors it takes (:func:`fits`, :func:`_ready`): CPU; float32, float64, bfloat16 or float16 (the
half types are computed in fp32 and each stored value rounded once, as torch's fused AdamW does, where
the for-loop rounds after every op); p, G, M and V contiguous; a float32 step counter; and K a
contiguous range of dims (every K slimbench's rules produce for 1-D to 4-D weights: (), fan_out, fan_in,
both, the embedding dim). Anything else goes to the compiled path.

Sharded tensors whose K includes a sharded dim (:func:`step_given`, ``slimadam_given_*``): the kernel is
handed each tensor's sums of G*G over K already added across ranks (:mod:`slimbench.optim._fused` forms
them and runs the one all-reduce) with n_K of the whole tensor, and only applies them: V gains
(1 - b2) * sum / n_K, then M and p are updated per row (K trailing) or per block of columns.
"""
from __future__ import annotations

import array
import ctypes
import operator
from dataclasses import dataclass
from math import prod

import torch
from torch import Tensor

from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from slimbench.optim._backends import Lists, warn_once
from slimbench.optim._functional import AdamHyper
from slimbench.optim._native_build import NativeUnavailable, build, cache_dir, load

__all__ = ["NATIVE", "NativeUnavailable", "build", "cache_dir", "library", "step_given", "step_where_possible"]

DTYPES = {torch.float32: "f32", torch.float64: "f64", torch.bfloat16: "bf16", torch.float16: "f16"}

# Work items of about this many entries (256 KiB of fp32 G): small enough to balance two or more threads,
# large enough that an item's bookkeeping is noise.
ITEM_ENTRIES = 1 << 16
# Column blocks (K leading): a gradient of at most BLOCK_BYTES is one block, so the update pass re-reads G
# from L2/L3. A larger one gets the widest blocks the kernel holds (MAX_W columns, split evenly): its
# second read of G comes from memory anyway, and long contiguous row segments stream at full bandwidth,
# where cache-sized blocks of 256 columns (1 KiB segments) made the update pass 1.7x slower than
# AdamW's (4096 x 4096 fp32, one thread).
BLOCK_BYTES = 1 << 22
MIN_SPLIT_W = 256  # narrowest block made only to give each thread one (1 KiB of fp32 per row segment)
SPLIT_BYTES = 1 << 18  # with several threads, gradients from this size get a block per thread
MAX_W = 4096  # the kernel's stack arrays (slimadam_max_block in the C file)
ABI = 3  # slimadam_abi_version(): the entry points' signatures (3: slimadam_given_* added)
# The kernel's return codes (SLIMADAM_E* in the C file).
KERNEL_ERRORS = {-1: "a count, thread number or pointer out of range", -2: "a tensor view with a zero extent",
                 -3: "a work item outside its tensor", -4: "out of memory for the per-call scratch"}


_DATA_PTR = operator.methodcaller("data_ptr")

_lib: ctypes.CDLL | None = None
_lib_error: str | None = None


def library() -> ctypes.CDLL:
    """The loaded kernel library (built on first call); raises NativeUnavailable, remembering why.

    A library whose hash checks out but lacks an entry point or has another ABI (a stale or foreign
    build) is rebuilt once; if the rebuilt one fails too, the kernel is unavailable (a fallback, never an
    AttributeError)."""
    global _lib, _lib_error
    if _lib is not None:
        return _lib
    if _lib_error is not None:
        raise NativeUnavailable(_lib_error)
    try:
        try:
            lib = _bind(load(build()))
        except _Foreign:
            lib = _bind(load(build(force=True)))
    except (NativeUnavailable, _Foreign) as e:
        _lib_error = str(e)
        raise NativeUnavailable(_lib_error) from None
    _lib = lib
    return lib


class _Foreign(Exception):
    """A loaded library that is not the kernel this source builds."""


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Declare the entry points' signatures; drop from DTYPES a dtype whose entry point the library lacks
    (e.g. no _Float16 in this C compiler). Raises _Foreign for a library that is not this kernel."""
    try:
        abi, max_block = lib.slimadam_abi_version(), lib.slimadam_max_block()
        lib.slimadam_step_f32, lib.slimadam_step_f64, lib.slimadam_given_f32, lib.slimadam_given_f64  # always built
    except AttributeError as e:
        raise _Foreign(f"the kernel library lacks an entry point ({e})") from None
    if abi != ABI or max_block != MAX_W:
        raise _Foreign(f"the kernel library has ABI {abi} / block {max_block}, expected {ABI} / {MAX_W}")
    for dtype, suffix in list(DTYPES.items()):
        fn = getattr(lib, f"slimadam_step_{suffix}", None)
        if fn is None:
            del DTYPES[dtype]
            continue
        fn.argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                       ctypes.c_void_p, ctypes.c_int64, *([ctypes.c_double] * 5), ctypes.c_int, ctypes.c_int]
        fn.restype = ctypes.c_int
        given = getattr(lib, f"slimadam_given_{suffix}", None)
        if given is None:  # built from the same source as step_*: a library with one lacks the other
            raise _Foreign(f"the kernel library has slimadam_step_{suffix} but not slimadam_given_{suffix}")
        given.argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                          *([ctypes.c_double] * 5), ctypes.c_int, ctypes.c_int]
        given.restype = ctypes.c_int
    return lib


def native_view(shape: torch.Size | tuple[int, ...], dims: tuple[int, ...]) -> tuple[int, int, int] | None:
    """(O, R, I) with K = the middle R dims, or None when K is not one contiguous range of dims."""
    if not dims:
        return (prod(shape), 1, 1)
    lo, hi = min(dims), max(dims) + 1
    if sorted(dims) != list(range(lo, hi)):
        return None
    return (prod(shape[:lo]), prod(shape[lo:hi]), prod(shape[hi:]))


def fits(p: Tensor, dims: tuple[int, ...]) -> bool:
    """What is fixed per tensor: CPU, a kernel dtype, K a contiguous range (cached per bucket structure)."""
    return p.device.type == "cpu" and p.dtype in DTYPES and native_view(p.shape, dims) is not None


def _ready(p: Tensor, g: Tensor, m: Tensor, v: Tensor, step: Tensor) -> bool:
    """What can change between steps: contiguity (a new non-contiguous grad, loaded state), the step counter."""
    return (p.is_contiguous() and g.is_contiguous() and m.is_contiguous() and v.is_contiguous()
            and step.dtype == torch.float32 and step.is_cpu)


def shared_by_team(rows: int, cols: int, itemsize: int, threads: int) -> bool:
    """Whether a leading-K gradient's blocks are done by all threads together (rows split between them):
    with several threads, a gradient beyond BLOCK_BYTES, whose second read comes from memory anyway."""
    return threads > 1 and rows * cols * itemsize > BLOCK_BYTES


def column_block(rows: int, cols: int, itemsize: int, threads: int = 1) -> int:
    """Columns per block for a leading-K reduction (see BLOCK_BYTES): all of them, or even blocks <= MAX_W;
    with several threads, a gradient of SPLIT_BYTES up to BLOCK_BYTES gets a block per thread (blocks are
    what threads own; one 4 MiB fan_out weight ran 2x slower than AdamW's two threads on one)."""
    size = rows * cols * itemsize
    n_blocks = -(-cols // MAX_W)
    if threads > 1 and SPLIT_BYTES <= size <= BLOCK_BYTES:
        n_blocks = max(n_blocks, min(threads, cols // MIN_SPLIT_W))
    if n_blocks == 1:
        return cols
    w = -(-cols // n_blocks)
    return min(MAX_W, cols, w + (-w) % 16)  # a multiple of 16 (whole cache lines) where possible


@dataclass(frozen=True)
class Plan:
    """A bucket's (O, R, I) per tensor and its work items, as the C arrays the kernel reads: ``items``
    are owned by one thread each, ``shared`` ones are done by the whole team (see shared_by_team)."""

    shapes: ctypes.Array
    items: ctypes.Array
    n_items: int
    shared: ctypes.Array
    n_shared: int


def make_plan(shapes: list[torch.Size], dims: list[tuple[int, ...]], itemsize: int, threads: int = 1) -> Plan:
    """The bucket's plan. Owned column blocks (K leading) come first, in tensor order: with one thread the
    kernel pipelines each run of consecutive column blocks (one block's update overlaps the next one's
    sums), so putting them together makes one run of the whole bucket's fan_out weights."""
    views, columns, items, shared = [], [], [], []
    for i, (shape, k) in enumerate(zip(shapes, dims)):
        o, r, n_in = native_view(shape, k)
        views += [o, r, n_in]
        if r == 1:  # Adam: ranges of entries
            n = o * n_in
            items += [x for lo in range(0, n, ITEM_ENTRIES) for x in (i, 0, lo, min(n, lo + ITEM_ENTRIES))]
        elif n_in == 1:  # a row per V entry: ranges of rows
            step = max(1, ITEM_ENTRIES // r)
            items += [x for lo in range(0, o, step) for x in (i, 0, lo, min(o, lo + step))]
        else:  # blocks of columns of each o
            w = column_block(r, n_in, itemsize, threads)
            blocks = [x for oo in range(o) for lo in range(0, n_in, w) for x in (i, oo, lo, min(n_in, lo + w))]
            if shared_by_team(r, n_in, itemsize, threads):
                shared += blocks
            else:
                columns += blocks
    items = columns + items
    return Plan((ctypes.c_int64 * len(views))(*views), (ctypes.c_int64 * len(items))(*items), len(items) // 4,
                (ctypes.c_int64 * len(shared))(*shared), len(shared) // 4)


def _check_rc(rc: int, what: str) -> None:
    """Raise for a kernel's nonzero return code (it has then touched nothing)."""
    if rc != 0:
        why = KERNEL_ERRORS.get(rc, f"code {rc}")
        if rc == -4:
            raise MemoryError(f"SlimAdam(fused=True): the native kernel is {why}")
        raise RuntimeError(f"SlimAdam(fused=True): the native kernel refused its plan for {what} ({why}) and "
                           "did not run; this is a slimbench bug, please report it")


def step_where_possible(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
                        exp_avg_sqs: list[Tensor], state_steps: list[Tensor], dims: list[tuple[int, ...]],
                        hp: AdamHyper, scratch: dict | None = None) -> list[int]:
    """Update every tensor the kernel takes (incrementing its step); return the indices of the others.

    The tensors must already fit their parameters (``_fused.check_state``): this plans from the parameters'
    shapes alone. ``scratch`` is a dict the caller keeps per ``_fused.signature`` (shapes, dtypes, devices,
    contiguity, the steps' dtype and device, K: everything the choices here depend on), where which
    tensors the kernel takes and their plans are cached, so a step only gathers data pointers. Without
    one, everything is worked out afresh. Raises NativeUnavailable (before touching anything) when the
    kernel cannot be built here.
    """
    if scratch is None:
        scratch = {}
    groups = scratch.get("groups")
    if groups is None:
        candidates = [i for i, (p, k) in enumerate(zip(params, dims)) if fits(p, k)]
        if candidates:
            library()  # loading drops from DTYPES any dtype whose entry point the library lacks
        take = [i for i in candidates if params[i].dtype in DTYPES
                and _ready(params[i], grads[i], exp_avgs[i], exp_avg_sqs[i], state_steps[i])]
        taken = set(take)
        scratch["rest"] = [i for i in range(len(params)) if i not in taken]
        by_dtype: dict[torch.dtype, list[int]] = {}
        for i in take:
            by_dtype.setdefault(params[i].dtype, []).append(i)
        groups = scratch["groups"] = list(by_dtype.items())
    if not groups:
        return scratch["rest"]
    lib = library()
    threads = torch.get_num_threads()
    for dtype, idx in groups:
        key = (dtype, threads)
        plan = scratch.get(key)
        if plan is None:
            plan = scratch[key] = make_plan([params[i].shape for i in idx], [dims[i] for i in idx],
                                            params[idx[0]].element_size(), threads)
        if len(idx) == len(params):  # the usual case: every tensor, one C-level map per list
            ptrs = array.array("q", [x for lst in (params, grads, exp_avgs, exp_avg_sqs, state_steps)
                                     for x in map(_DATA_PTR, lst)])
        else:
            ptrs = array.array("q", [lst[i].data_ptr() for lst in (params, grads, exp_avgs, exp_avg_sqs, state_steps)
                                     for i in idx])
        rc = getattr(lib, f"slimadam_step_{DTYPES[dtype]}")(
            len(idx), ptrs.buffer_info()[0], plan.shapes, plan.items, plan.n_items, plan.shared, plan.n_shared,
            hp.lr, hp.beta1, hp.beta2, hp.eps, hp.weight_decay, int(hp.maximize), threads)
        _check_rc(rc, f"the {dtype} tensors")
    return scratch["rest"]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The kernel's compute type T for a storage dtype: fp32 for the half types (the sums it is given)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def make_given_plan(shapes: list[torch.Size], dims: list[tuple[int, ...]], counts: list[int]) -> tuple:
    """(meta, items, n_items) for :func:`step_given`: meta rows (O, R, I, n_K, O*I), items (tensor, o, lo,
    hi): ranges of rows for K trailing (I == 1), else blocks of at most MAX_W columns of one o."""
    meta, items = [], []
    for i, (shape, k, n_k) in enumerate(zip(shapes, dims, counts)):
        o, r, n_in = native_view(shape, k)
        meta += [o, r, n_in, n_k, o * n_in]
        if n_in == 1:
            step = max(1, ITEM_ENTRIES // r)
            items += [x for lo in range(0, o, step) for x in (i, 0, lo, min(o, lo + step))]
        else:
            w = min(MAX_W, max(1, ITEM_ENTRIES // r), n_in)
            items += [x for oo in range(o) for lo in range(0, n_in, w) for x in (i, oo, lo, min(n_in, lo + w))]
    return (ctypes.c_int64 * len(meta))(*meta), (ctypes.c_int64 * len(items))(*items), len(items) // 4


def step_given(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
               state_steps: list[Tensor], dims: list[tuple[int, ...]], sums: list[Tensor], counts: list[int],
               hp: AdamHyper, scratch: dict | None = None) -> list[int]:
    """Update, with V's sums given, every tensor the kernel takes; return the indices of the others.

    For the tensors whose K includes a dim sharded across ranks (:mod:`slimbench.optim._reduce` phase 3):
    ``sums[i]`` is sum_K(G*G) at V's reduced shape, already added across ranks, and ``counts[i]`` n_K of the
    whole tensor, so V gains (1 - b2) * sums[i] / counts[i]; the kernel reduces nothing itself
    (``slimadam_given_*``). A tensor is taken when :func:`fits` and :func:`_ready` hold, it is not empty
    and its sums are a contiguous CPU tensor of the compute dtype (fp32 for the half types) with V's
    number of entries (checked every call: the sums are new every step); the kernel checks its plan against
    (O, R, I, n_K, O*I) before touching memory. ``scratch`` caches the choice and plan per call signature.
    """
    if scratch is None:
        scratch = {}
    groups = scratch.get("given")
    if groups is None:
        candidates = [i for i, (p, k) in enumerate(zip(params, dims)) if fits(p, k) and p.numel() > 0]
        if candidates:
            library()
        take = [i for i in candidates if params[i].dtype in DTYPES
                and _ready(params[i], grads[i], exp_avgs[i], exp_avg_sqs[i], state_steps[i])]
        by_dtype: dict[torch.dtype, list[int]] = {}
        for i in take:
            by_dtype.setdefault(params[i].dtype, []).append(i)
        groups = scratch["given"] = [(dt, idx, make_given_plan([params[i].shape for i in idx], [dims[i] for i in idx],
                                                               [counts[i] for i in idx]))
                                     for dt, idx in by_dtype.items()]
    done: set[int] = set()
    threads = torch.get_num_threads()
    for dtype, idx, (meta, items, n_items) in groups:
        ct = _compute_dtype(dtype)
        fresh = []
        for i in idx:  # the sums are new tensors every call: their fit is checked every call
            s, v = sums[i], exp_avg_sqs[i]
            if (s.dtype == ct and s.device.type == "cpu" and s.is_contiguous() and s.numel() == v.numel()
                    and counts[i] >= 1):
                fresh.append(i)
        if len(fresh) != len(idx):  # an unexpected sums tensor: no kernel call for this dtype, the caller steps it
            continue
        lib = library()
        ptrs = array.array("q", [lst[i].data_ptr() for lst in (params, grads, exp_avgs, exp_avg_sqs, state_steps, sums)
                                 for i in idx])
        rc = getattr(lib, f"slimadam_given_{DTYPES[dtype]}")(
            len(idx), ptrs.buffer_info()[0], meta, items, n_items,
            hp.lr, hp.beta1, hp.beta2, hp.eps, hp.weight_decay, int(hp.maximize), threads)
        _check_rc(rc, f"the {dtype} tensors with given sums")
        done.update(idx)
    return [i for i in range(len(params)) if i not in done]


class _Native:
    """The first fused backend: the C kernel for the CPU tensors it takes (:func:`fits`, :func:`_ready`).

    Its mean_K(G*G) follows :mod:`slimbench.optim._reduce`'s contract (the sum over K in double, per row or
    column block, divided by n_K). A K that crosses ranks reaches it through :meth:`step_given`: the sums
    are formed and all-reduced by :mod:`slimbench.optim._fused` and the kernel only applies them. Under
    the caller's torch.compile or a TorchDispatchMode it takes nothing, so the maths runs as torch ops that
    can be traced or seen."""

    name = "native"

    def takes(self, p: Tensor, k: tuple[int, ...]) -> bool:
        return fits(p, k)

    def step(self, lists: Lists, hp: AdamHyper, scratch: dict) -> list[int]:
        if torch.compiler.is_compiling() or is_in_torch_dispatch_mode():
            return list(range(len(lists[0])))
        try:
            return step_where_possible(*lists, hp, scratch=scratch)
        except NativeUnavailable as e:
            warn_once(f"SlimAdam(fused=True): the native CPU kernel is unavailable ({e}); using torch.compile instead")
            return list(range(len(lists[0])))

    def step_given(self, lists: Lists, sums: list[Tensor], counts: list[int], hp: AdamHyper,
                   scratch: dict) -> list[int]:
        """:func:`step_given` for the tensors whose sums were added across ranks; the indices it left."""
        if torch.compiler.is_compiling() or is_in_torch_dispatch_mode():
            return list(range(len(lists[0])))
        try:
            return step_given(*lists, sums, counts, hp, scratch=scratch)
        except NativeUnavailable as e:
            warn_once(f"SlimAdam(fused=True): the native CPU kernel is unavailable ({e}); using torch.compile instead")
            return list(range(len(lists[0])))


NATIVE = _Native()
