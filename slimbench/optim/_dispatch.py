"""``slimadam``: the public functional SlimAdam, above every kernel it dispatches to.

Layers (imports run downwards only): this module -> ``_fused`` (state checks and the ordered backend
list) -> the backends ``_native`` (C kernel), ``_compiled`` (torch.compile) and ``_functional`` (for-loop,
foreach) -> ``_reduce`` (the mean_K(G*G) seam) and ``_backends`` (the backend contract).
"""
from __future__ import annotations

from torch import Tensor

from slimbench.optim._functional import AdamHyper, _multi_tensor_slimadam, _single_tensor_slimadam
from slimbench.optim._reduce import CrossRank


def slimadam(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
             state_steps: list[Tensor], dims: list[tuple[int, ...]], *, hp: AdamHyper,
             foreach: bool = False, fused: bool = False, fused_backend: str = "auto",
             cross_rank: CrossRank | None = None) -> None:
    """Functional SlimAdam: see :class:`slimbench.SlimAdam` for the algorithm and the ``fused`` paths.

    ``cross_rank`` (from :mod:`slimbench.distributed`) marks the tensors whose K includes a dim sharded
    across ranks; the lists then hold local shards. With ``fused``, those tensors' local sums are added
    across ranks in the call's one all-reduce and the native kernel applies them (``_fused._step_crossing``;
    what it cannot take runs the foreach path on the same sums, one warning), the others the fused backends.
    """
    if foreach and fused:
        raise ValueError("`fused` and `foreach` cannot be `True` together.")
    lists = (params, grads, exp_avgs, exp_avg_sqs, state_steps, dims)
    if fused:
        from slimbench.optim._fused import _fused_slimadam  # imported when used: it loads the backends

        if params:
            _fused_slimadam(*lists, hp, fused_backend, cross_rank)
        return
    if not params and not (cross_rank and cross_rank.any()):
        return
    impl = _multi_tensor_slimadam if foreach else _single_tensor_slimadam
    impl(*lists, hp, cross_rank)
