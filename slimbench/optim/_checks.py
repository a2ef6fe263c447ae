r"""The fused paths' state checks: every tensor against its parameter, once per call signature.

Both fused paths index memory by the parameter's shape, so before either
runs, every tensor is checked against its parameter: the gradient and exp_avg have its shape, dtype and
device, exp_avg_sq exactly the reduced shape for its K, K are distinct dims of the parameter, the step is
a one-element float tensor, no two parameters share memory, and the parameter is real floating point.
A mismatch is a one-line ValueError (e.g. a checkpoint's state that does not fit the parameter) before
anything is updated. The checks depend only on each tensor's shape, dtype, device and K, so they run once
per :func:`signature` (cached; a hit costs building and hashing the signature, which also caches which
tensors the native kernel takes and its plan); zero-size tensors are skipped.

Its own module so that every fused backend (the dispatcher in :mod:`slimbench.optim._fused`, the Triton
entry point) checks through one function without importing the dispatcher.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from slimbench.optim._functional import reduced_shape

__all__ = ["MAX_CHECKED", "Checked", "check_state", "checked", "signature"]

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
    scratch: dict = field(default_factory=dict)  # the other backends' caches, by name


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
