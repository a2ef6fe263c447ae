r"""Signal-to-noise ratio of Adam's second moment along dims K (Kalra et al. 2025, Sec. 4).

For a second-moment tensor V and a set of dims K,

.. math::
    \mathrm{SNR}_K(V) = \operatorname{mean}_{\text{other dims}}
        \frac{\left(\operatorname{mean}_K V\right)^2}{\operatorname{var}_K V}

with the population variance (divide by |K|, not |K| - 1). A high SNR says the entries of V along K are
nearly equal, so replacing them by their mean (SlimAdam) changes Adam's update little. It is computed on
the raw V: bias correction multiplies V by a scalar and SNR is scale invariant, so it cancels.

Positions where var_K V == 0 (a constant slice, e.g. an embedding row that never saw a gradient) have no
defined ratio and are dropped before the outer mean; when every position is dropped the SNR is ``inf``
(V is exactly constant along K), never NaN. A NaN anywhere in V propagates to a NaN SNR, so a diverged
run is visible rather than silently averaged away.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from slimbench.layers import normalize_dims


def dims_key(dims: Sequence[int]) -> str:
    """The JSON key of a candidate K: (0,) -> "0", (0, 1) -> "0,1" (as in rules files)."""
    return ",".join(str(int(d)) for d in dims)


def key_dims(key: str) -> tuple[int, ...]:
    """Inverse of :func:`dims_key`."""
    return tuple(int(x) for x in key.split(",") if x.strip())


def candidates(shape: Sequence[int]) -> list[tuple[int, ...]]:
    """The K worth measuring for a tensor of ``shape``: fan_out (0,), fan_in (1, ..., n-1), all dims.

    For a 2-D (out, in) weight that is (0,), (1,), (0, 1); for a conv (out, in, kh, kw) it is fan_out,
    fan_in = (1, 2, 3) and all. Tensors with fewer than 2 dims get none (the paper leaves them
    uncompressed). A K whose dims all have size 1 is left out: averaging over it changes nothing and
    saves nothing, yet its SNR would be reported as inf.
    """
    n = len(shape)
    if n < 2:
        return []
    out: list[tuple[int, ...]] = []
    for k in ((0,), tuple(range(1, n)), tuple(range(n))):
        if k not in out and math.prod(int(shape[d]) for d in k) > 1:
            out.append(k)
    return out


def _normalize_dims(dims: int | Iterable[int], shape: Sequence[int]) -> tuple[int, ...]:
    ks = (dims,) if isinstance(dims, int) else tuple(int(d) for d in dims)
    if not ks:
        raise ValueError("dims must name at least one dim (K = () has no variance to measure)")
    return normalize_dims(ks, shape)


def _snr_parts(v: Tensor, dims: tuple[int, ...]) -> Tensor:
    """(sum of kept ratios, number kept) as a 2-element tensor, without a device sync.

    Boolean indexing would need the count on the host; a masked sum keeps everything on V's device so a
    tracker can measure all parameters and sync once.
    """
    var, mean = torch.var_mean(v, dim=dims, correction=0)
    keep = var != 0  # NaN != 0 is True: NaN in V stays visible
    ratio = torch.where(keep, mean * mean / torch.where(keep, var, torch.ones_like(var)), torch.zeros_like(var))
    return torch.stack((ratio.sum(), keep.sum().to(ratio.dtype)))


def _finish(total: float, count: float) -> float:
    return math.inf if count == 0 else total / count


def snr(v: Tensor | Sequence, dims: int | Iterable[int], *, dtype: torch.dtype = torch.float64) -> float:
    """SNR of ``v`` along ``dims`` (see the module docstring).

    Args:
        v: the second moment (a tensor, or anything ``torch.as_tensor`` accepts).
        dims: the dims K to average over (an int or a sequence; negative allowed).
        dtype: precision of the computation. float64 by default: V entries can be ~1e-20, and their
            variance would underflow float32 and be mistaken for zero.

    >>> snr(torch.tensor([[1., 2., 3.], [4., 4., 4.]]), (1,))
    6.0
    """
    t = torch.as_tensor(v).detach()
    k = _normalize_dims(dims, t.shape)
    total, count = _snr_parts(t.to(dtype), k).tolist()
    return _finish(total, count)


def snr_all(v: Tensor, cands: Sequence[Sequence[int]] | None = None, *,
            dtype: torch.dtype = torch.float64) -> dict[str, float]:
    """SNR of ``v`` for each candidate K (default :func:`candidates` of its shape), keyed by :func:`dims_key`."""
    many = snr_many([v], [cands if cands is not None else candidates(v.shape)], dtype=dtype)
    return many[0]


def snr_many(tensors: Sequence[Tensor], cands: Sequence[Sequence[Sequence[int]]], *,
             dtype: torch.dtype = torch.float64) -> list[dict[str, float]]:
    """SNR of many tensors for their candidate K, with one host sync for the whole batch.

    ``cands[i]`` lists the K for ``tensors[i]``. Returns one ``{dims_key: snr}`` dict per tensor.
    """
    parts: list[Tensor] = []
    keys: list[list[str]] = []
    for t, ks in zip(tensors, cands):
        x = t.detach().to(dtype)
        row = []
        for k in ks:
            k = _normalize_dims(k, x.shape)
            parts.append(_snr_parts(x, k))
            row.append(dims_key(k))
        keys.append(row)
        del x  # the float64 copy can be large; free it before converting the next tensor
    # One stack and one copy to the host per device (not one sync per tensor).
    by_device: dict[torch.device, list[int]] = {}
    for i, p in enumerate(parts):
        by_device.setdefault(p.device, []).append(i)
    values: list[list[float]] = [[]] * len(parts)
    for idx in by_device.values():
        for i, row in zip(idx, torch.stack([parts[i] for i in idx]).tolist()):
            values[i] = row
    out: list[dict[str, float]] = []
    i = 0
    for row in keys:
        d = {}
        for key in row:
            d[key] = _finish(*values[i])
            i += 1
        out.append(d)
    return out
