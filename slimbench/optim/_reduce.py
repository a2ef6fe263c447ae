r"""The one "mean of G^2 over K" seam of SlimAdam: every path computes its V term through this contract.

Contract: for a gradient G and compression dims K, ``mean_K(G*G)`` is **sum_K(G*G) / n_K**, with the K dims
kept as size 1 (:func:`reduced_shape`), the sum formed in the accumulation dtype (fp32 for the half types,
else G's dtype) and n_K the number of entries over K of the *whole* (unsharded) tensor. The three phases are
separate so that a tensor sharded on a dim in K fits in between:

    1. local sums        :func:`sum_sq` (eager) / :func:`mean_sq_graph` (inside a torch.compile graph)
    2. cross-rank sum    :class:`CrossRank` -- ``all_reduce(sums)``: ONE collective for all the tensors of a
                         call whose K includes a sharded dim (slimbench.distributed builds it); skipped when
                         no tensor needs it, so a K over local dims never communicates
    3. divide by n_K     the global count, then cast to G's dtype

Who implements it: the for-loop (:func:`mean_sq`, one tensor at a time), the foreach path (its fast path
``addcmul(V, |G|_K, |G|_K, (1-b2)/n_K)`` is phases 1 and 3 folded into one call; :func:`mean_sqs` when
some tensor crosses ranks), the compiled bucket (:func:`mean_sq_graph`), and the C kernel
(``_native_kernel.c``), which forms the same sum in double per row or column block and divides by n_K
while the block is in cache. For a tensor whose K crosses ranks the fused path splits the phases around
the kernel (:func:`slimbench.optim._fused._step_crossing`): phase 1 is :func:`sum_sq` (half types in fp32),
phase 2 the call's one :class:`CrossRank` all-reduce, and phase 3 runs in the kernel's ``slimadam_given_*``
entry point, which divides the sums it is given by the whole tensor's n_K; what the kernel cannot take
(K not a range of dims) runs the foreach path on those same sums (one warning). A new kernel implements
phases 1 and 3 for its tensors; a cross-rank reduction is one :class:`CrossRank`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from math import prod

import torch
from torch import Tensor

# Row blocks for leading-dim reductions: a gradient of up to 256 KiB is squared whole (one temporary the
# size of G, for one op instead of 8-16; on a 1M-parameter GPT the blocks' per-op overhead was a tenth of
# the foreach step), a larger one in blocks of 1/16 of it clamped to [32, 256] KiB.
_BLOCK_BYTES = 1 << 18
_MIN_BLOCK_BYTES = 1 << 15


def reduced_shape(shape: torch.Size | tuple[int, ...], dims: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of V for a parameter of ``shape``: the K dims set to 1."""
    return tuple(1 if i in dims else s for i, s in enumerate(shape))


def trailing(grad: Tensor, dims: tuple[int, ...]) -> bool:
    """Whether sum_K can go through ``vector_norm`` (K trailing, or K not touching dim 0): see :func:`sum_sq`."""
    return dims == tuple(range(grad.dim() - len(dims), grad.dim())) or 0 not in dims


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a sum of squares is formed in: fp32 for the half types, else the tensor's own."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def sum_sq(grad: Tensor, dims: tuple[int, ...], acc: bool = False) -> Tensor:
    """Phase 1: sum_K(G*G) with K dims kept as size 1, without a full-size G*G temporary.

    Reducing trailing dims (fan_in, all dims) goes through ``vector_norm`` in one pass: the transient
    is the reduced shape. ``vector_norm`` over a leading dim (fan_out) takes a strided path that is
    10-25x slower on CPU (0.58 ms vs 0.06 ms for a 256x1024 gradient, 1 thread), so there G*G is summed
    in blocks of rows instead, each block's temporary at most max(32 KiB, min(256 KiB, G/16)), or all of
    G when G is at most 256 KiB; this keeps SlimAdam's step faster than AdamW's and its transient memory
    far below it. Half-precision gradients accumulate in fp32 (the result is then fp32). An empty local
    shard (FSDP2's tail ranks) sums to zeros, so it can still take part in the cross-rank sum.
    ``acc=True``: the trailing branch too forms (and returns) the half types' sums in fp32, as the native
    kernel is given them (:func:`slimbench.optim._fused._step_crossing`); by default it returns G's dtype there.
    """
    if grad.numel() == 0:
        return torch.zeros(reduced_shape(grad.shape, dims), dtype=acc_dtype(grad.dtype), device=grad.device)
    if trailing(grad, dims):
        if acc and acc_dtype(grad.dtype) != grad.dtype:
            return torch.linalg.vector_norm(grad, 2, dim=dims, keepdim=True, dtype=acc_dtype(grad.dtype)).square_()
        return torch.linalg.vector_norm(grad, 2, dim=dims, keepdim=True).square_()
    acc = acc_dtype(grad.dtype)
    row_bytes = max(1, grad[0].numel() * grad.element_size())
    grad_bytes = grad.numel() * grad.element_size()
    if grad_bytes <= _BLOCK_BYTES:
        budget = grad_bytes
    else:
        budget = max(row_bytes, _MIN_BLOCK_BYTES, min(_BLOCK_BYTES, grad_bytes // 16))
    rows = max(1, budget // row_bytes)
    out = None
    for i in range(0, grad.shape[0], rows):
        part = grad[i:i + rows].to(acc).square().sum(dim=dims, keepdim=True)
        out = part if out is None else out.add_(part)
    return out


def mean_sq(grad: Tensor, dims: tuple[int, ...], n: int | None = None) -> Tensor:
    """mean_K(G*G) of one tensor (phases 1 and 3; ``n`` = n_K of the whole tensor, default G's own)."""
    if n is None:
        n = prod(grad.shape[d] for d in dims)
    return sum_sq(grad, dims).div_(n).to(grad.dtype)


@dataclass(frozen=True)
class CrossRank:
    """Phase 2 for one call: which tensors' K includes a sharded dim, and how to sum across ranks.

    ``counts[i]`` is n_K of tensor i's whole tensor when its sums must be added across ranks, else None
    (a K over local dims: no communication). ``all_reduce`` sums a list of tensors in place across the
    ranks holding the shards, as ONE collective (slimbench.distributed flattens them into one buffer).
    Every rank must pass the same tensors in the same order, empty shards included.
    """

    counts: tuple[int | None, ...]
    all_reduce: Callable[[list[Tensor]], None]

    def any(self) -> bool:
        return any(c is not None for c in self.counts)


def mean_sqs(grads: Sequence[Tensor], dims: Sequence[tuple[int, ...]],
             cross_rank: CrossRank | None = None) -> list[Tensor]:
    """mean_K(G*G) for a list of tensors: all three phases, one cross-rank collective for the whole list."""
    sums = [sum_sq(g, tuple(k)) for g, k in zip(grads, dims)]
    counts: Sequence[int | None] = cross_rank.counts if cross_rank is not None else [None] * len(sums)
    shared = [s for s, c in zip(sums, counts) if c is not None]
    if shared:
        cross_rank.all_reduce(shared)
    return [s.div_(c if c is not None else prod(g.shape[d] for d in k)).to(g.dtype)
            for s, c, g, k in zip(sums, counts, grads, dims)]


def mean_sq_leading(g: Tensor, dims: tuple[int, ...]) -> Tensor:
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


def mean_sq_graph(g: Tensor, dims: tuple[int, ...]) -> Tensor:
    """mean_K(G*G) as the compiled bucket traces it (phases 1 and 3 in the graph; K non-empty)."""
    if _leading(dims) and len(dims) < g.dim() and g.is_contiguous():
        return mean_sq_leading(g, dims)
    return (g * g).mean(dim=dims, keepdim=True)  # fused into the reduction: no full-size G*G


def _leading(dims: tuple[int, ...]) -> bool:
    """Whether K is the first len(K) dims (e.g. fan_out, K = (0,), of an (out, in) weight)."""
    return dims == tuple(range(len(dims)))
