r"""Fused SlimAdam: a group's whole update in a few passes over memory.

``fused=True`` first offers every tensor to the hand-written CPU kernel (:mod:`slimbench.optim._native`:
CPU fp32/fp64/bf16/fp16, K a contiguous range of dims; backend "auto"); what it does not take (GPU
tensors, K such as (0, 2), a non-contiguous gradient), or everything with ``fused_backend="compile"``,
is compiled by ``torch.compile`` (:mod:`slimbench.optim._compiled`); what cannot compile runs the foreach
path. Those backends satisfy one contract (:mod:`slimbench.optim._backends`) and one list, :data:`BACKENDS`,
ordered fastest first, decides; :func:`chain` picks it for ``fused_backend``. Every backend computes
mean_K(G*G) by the contract of :mod:`slimbench.optim._reduce`.


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
from slimbench.optim._functional import FOREACH, FUSED_BACKENDS, AdamHyper
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


def _warn_once(msg: str) -> None:
    warn_once(msg)


def _fused_slimadam(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
                    exp_avg_sqs: list[Tensor], state_steps: list[Tensor],
                    dims: list[tuple[int, ...]], hp: AdamHyper, backend: str = "auto") -> None:
    """SlimAdam fused: each backend of :func:`chain` steps what it takes and leaves the rest to the next.
    Raises ValueError, having updated nothing, when a tensor does not fit its parameter (:func:`check_state`)."""
    backends = chain(backend)
    entry = checked(params, grads, exp_avgs, exp_avg_sqs, state_steps, dims)
    lists: Lists = (params, grads, exp_avgs, exp_avg_sqs, state_steps, dims)
    if entry.keep is not None:  # zero-size tensors: nothing to update
        if not entry.keep:
            return
        lists = subset(lists, entry.keep)
    for b in backends:
        # each backend's scratch lives with the call signature's checks (plans, which tensors it takes)
        rest = b.step(lists, hp, entry.native if b is _native.NATIVE else entry.scratch.setdefault(b.name, {}))
        if not rest:
            return
        if len(rest) < len(lists[0]):
            lists = subset(lists, rest)
