r"""Fused SlimAdam: a group's whole update in a few passes over memory.

``fused=True`` first offers every tensor to the hand-written CPU kernel (:mod:`slimbench.optim._native`:
CPU fp32/fp64/bf16/fp16, K a contiguous range of dims; backend "auto"); what it does not take (GPU
tensors, K such as (0, 2), a non-contiguous gradient), or everything with ``fused_backend="compile"``,
is compiled by ``torch.compile`` (:mod:`slimbench.optim._compiled`); what cannot compile runs the foreach
path. Those backends satisfy one contract (:mod:`slimbench.optim._backends`) and one list, :data:`BACKENDS`,
ordered fastest first, decides; :func:`chain` picks it for ``fused_backend``. Every backend computes
mean_K(G*G) by the contract of :mod:`slimbench.optim._reduce`.

Sharded tensors whose K includes a sharded dim (``cross_rank``): :func:`_step_crossing` forms their local
sums of G*G over K, adds them across ranks in the call's one all-reduce and hands them to the native
kernel's ``slimadam_given_*`` entry point, which divides by the whole tensor's n_K and updates V, M and p;
what it cannot take (K not a range of dims) runs the foreach path on the same sums, with one warning.


Safety: both fused paths index memory by the parameter's shape, so every tensor is first checked against its
parameter (:mod:`slimbench.optim._checks`; a one-line ValueError before anything is updated).

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

from torch import Tensor

from slimbench.optim import _native, _triton
from slimbench.optim._backends import Backend, Lists, _warned, subset, warn_once
from slimbench.optim._checks import MAX_CHECKED, Checked, _checked, check_state, checked, signature  # noqa: F401
from slimbench.optim._compiled import COMPILED, _broken, _kernels
from slimbench.optim._functional import FOREACH, FUSED_BACKENDS, AdamHyper, _multi_tensor_slimadam
from slimbench.optim._reduce import CrossRank, sum_sq
from slimbench.optim._triton import TRITON, TRITON_STRICT

__all__ = ["BACKENDS", "chain", "check_state", "checked", "clear_cache", "signature", "_broken", "_warned"]

# The fused backends, fastest first; each leaves what it does not take to the next. A Triton backend
# (GPU) goes before COMPILED: one module, one entry here.
BACKENDS: tuple[Backend, ...] = (_native.NATIVE, TRITON, COMPILED, FOREACH)

def chain(backend: str) -> tuple[Backend, ...]:
    """The backends that ``fused_backend=backend`` runs, in order (the one place this is decided):
    "auto" = all of :data:`BACKENDS` (Triton for CUDA tensors); "compile" = torch.compile, then foreach for
    what cannot compile; "triton" = the Triton kernel (CPU tensors under TRITON_INTERPRET=1, else an
    error), then torch.compile and foreach for what it declines."""
    if backend not in FUSED_BACKENDS:
        raise ValueError(f"unknown fused backend {backend!r}; expected one of {FUSED_BACKENDS}")
    if backend == "triton":
        return (TRITON_STRICT, COMPILED, FOREACH)
    return BACKENDS if backend == "auto" else tuple(b for b in BACKENDS if b.name in ("compile", "foreach"))


def clear_cache() -> None:
    """Forget checks, native plans, compiled graphs, fallback decisions and issued warnings (to time a cold
    compile; tests)."""
    _checked.clear()  # with the native kernel's plans, kept per signature
    _kernels.clear()
    _broken.clear()
    _warned.clear()
    _triton._broken.clear()
    _triton.specializations.clear()


class _Given:
    """A CrossRank ``all_reduce`` whose sums are already added across ranks: it copies them in, so the
    foreach path's three phases run on this call's one all-reduce instead of issuing another."""

    def __init__(self, sums: list[Tensor]) -> None:
        self.sums = sums

    def __call__(self, tensors: list[Tensor]) -> None:
        if len(tensors) != len(self.sums) or any(t.shape != s.shape for t, s in zip(tensors, self.sums)):
            raise RuntimeError("SlimAdam(fused=True): the reduced sums do not match the tensors that cross ranks; "
                               "this is a slimbench bug, please report it")
        for t, s in zip(tensors, self.sums):
            t.copy_(s)


def _step_crossing(lists: Lists, counts: list[int], hp: AdamHyper, backends: tuple[Backend, ...],
                   all_reduce, scratch: dict) -> None:
    """The tensors whose K includes a dim sharded across ranks (:mod:`slimbench.optim._reduce`'s phases):
    1. each one's local sum_K(G*G) (:func:`sum_sq`; an empty shard sums to zeros and still takes part),
    2. ONE all-reduce for all of them (``all_reduce``, the call's CrossRank: one flat buffer per dtype),
    3. the native kernel's update with the reduced sums given (``slimadam_given_*``: V gains
       (1 - b2) * sum / n_K of the whole tensor). What the kernel does not take (K not a range of dims, a
       non-contiguous gradient, an empty shard, another device, or a chain without it) runs the foreach
       path on the same reduced sums (no second collective): the compiled kernels have no cross-rank phase.
    """
    grads, dims = lists[1], lists[5]
    sums = [sum_sq(g, tuple(k), acc=True) for g, k in zip(grads, dims)]
    all_reduce(sums)
    rest = list(range(len(sums)))
    if _native.NATIVE in backends:
        rest = _native.NATIVE.step_given(lists, sums, counts, hp, scratch)  # sum_sq(acc=True): the kernel's T
    if rest:
        lost = [i for i in rest if lists[0][i].numel() > 0]
        if lost:
            warn_once(f"SlimAdam(fused=True): {len(lost)} tensors reduce V over a dim sharded across ranks and "
                      "the native kernel cannot take them (K not a contiguous range of dims, a non-contiguous "
                      "tensor, another device or dtype, or fused_backend without it); they run the foreach "
                      "path on the same all-reduce")
        _multi_tensor_slimadam(*subset(lists, rest), hp,
                               CrossRank(tuple(counts[i] for i in rest), _Given([sums[i] for i in rest])))


def _fused_slimadam(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
                    exp_avg_sqs: list[Tensor], state_steps: list[Tensor],
                    dims: list[tuple[int, ...]], hp: AdamHyper, backend: str = "auto",
                    cross_rank: CrossRank | None = None) -> None:
    """SlimAdam fused: each backend of :func:`chain` steps what it takes and leaves the rest to the next.
    Raises ValueError, having updated nothing, when a tensor does not fit its parameter (:func:`check_state`).

    ``cross_rank`` (from :mod:`slimbench.distributed`; the lists then hold local shards) marks the tensors
    whose K includes a sharded dim: they are stepped first by :func:`_step_crossing` (local sums, one
    all-reduce for the call, the native kernel with the sums given), the others by the backends."""
    backends = chain(backend)
    entry = checked(params, grads, exp_avgs, exp_avg_sqs, state_steps, dims)
    lists: Lists = (params, grads, exp_avgs, exp_avg_sqs, state_steps, dims)
    keep = entry.keep
    scratch_of = entry.scratch
    native_scratch = entry.native
    if cross_rank is not None and cross_rank.any():
        if len(cross_rank.counts) != len(params):
            raise ValueError(f"SlimAdam(fused=True): cross_rank covers {len(cross_rank.counts)} tensors, the call "
                             f"{len(params)}")
        crossing = [i for i, c in enumerate(cross_rank.counts) if c is not None]
        key = tuple(crossing)
        counts = [cross_rank.counts[i] for i in crossing]
        # the signature is of the local shards: the plans also depend on the whole tensors' n_K
        _step_crossing(subset(lists, crossing), counts, hp, backends, cross_rank.all_reduce,
                       entry.scratch.setdefault(("crossing", key, tuple(counts)), {}))
        kept = set(range(len(params)) if keep is None else keep)
        keep = [i for i in range(len(params)) if cross_rank.counts[i] is None and i in kept]
        # the backends below see a subset of the call's lists: their caches are kept per subset
        scratch_of = entry.scratch.setdefault(("local", key), {})
        native_scratch = scratch_of.setdefault(_native.NATIVE.name, {})
    if keep is not None:  # zero-size tensors (and, under cross_rank, the tensors stepped above)
        if not keep:
            return
        lists = subset(lists, keep)
    for b in backends:
        # each backend's scratch lives with the call signature's checks (plans, which tensors it takes)
        rest = b.step(lists, hp, native_scratch if b is _native.NATIVE else scratch_of.setdefault(b.name, {}))
        if not rest:
            return
        if len(rest) < len(lists[0]):
            lists = subset(lists, rest)
