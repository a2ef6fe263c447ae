r"""The SlimAdam update as pure functions over parallel tensor lists (torch.optim's functional style).

Every kernel takes the same lists (params, grads, exp_avgs, exp_avg_sqs, state_steps, dims) and the
same :class:`AdamHyper`, so one can stand in for another and "foreach == for-loop" is a plain test.

For a parameter with compression dims K (a tuple of tensor dims; () = Adam)::

    t  <- t + 1
    p  <- p * (1 - lr * wd)                                   decoupled weight decay (AdamW)
    M  <- b1 * M + (1 - b1) * G
    V  <- b2 * V + (1 - b2) * mean_K(G * G)                   V has G's shape with the K dims of size 1
    p  <- p - lr / (1 - b1^t) * M / (sqrt(V) / sqrt(1 - b2^t) + eps)     V broadcast over K

With K = () the arithmetic is torch.optim.AdamW's, operation for operation, so the results agree to the
last bit in the for-loop path and to fp rounding in the foreach path.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from math import prod

import torch
from torch import Tensor


@dataclass(frozen=True)
class AdamHyper:
    """Hyperparameters of one param group for one step (read from the group every step)."""

    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    maximize: bool = False


# fused=True implementations: "auto" = the native CPU kernel where it applies, else torch.compile
# (slimbench.optim._fused); "compile" = torch.compile for every tensor.
FUSED_BACKENDS = ("auto", "compile")

# Row blocks for leading-dim reductions: a gradient of up to 256 KiB is squared whole (one temporary the
# size of G, for one op instead of 8-16; on a 1M-parameter GPT the blocks' per-op overhead was a tenth of
# the foreach step), a larger one in blocks of 1/16 of it clamped to [32, 256] KiB.
_BLOCK_BYTES = 1 << 18
_MIN_BLOCK_BYTES = 1 << 15


def mean_sq(grad: Tensor, dims: tuple[int, ...]) -> Tensor:
    """mean_K(G*G) with K dims kept as size 1, without a full-size G*G temporary.

    Reducing trailing dims (fan_in, all dims) goes through ``vector_norm`` in one pass: the transient
    is the reduced shape. ``vector_norm`` over a leading dim (fan_out) takes a strided path that is
    10-25x slower on CPU (0.58 ms vs 0.06 ms for a 256x1024 gradient, 1 thread), so there G*G is summed
    in blocks of rows instead, each block's temporary at most max(32 KiB, min(256 KiB, G/16)), or all of
    G when G is at most 256 KiB; this
    keeps SlimAdam's step faster than AdamW's and its transient memory far below it. Half-precision
    gradients accumulate in fp32.
    """
    n = prod(grad.shape[d] for d in dims)
    if _trailing(grad, dims):
        return torch.linalg.vector_norm(grad, 2, dim=dims, keepdim=True).square_().div_(n)
    acc_dtype = torch.float32 if grad.dtype in (torch.float16, torch.bfloat16) else grad.dtype
    row_bytes = max(1, grad[0].numel() * grad.element_size())
    grad_bytes = grad.numel() * grad.element_size()
    if grad_bytes <= _BLOCK_BYTES:
        budget = grad_bytes
    else:
        budget = max(row_bytes, _MIN_BLOCK_BYTES, min(_BLOCK_BYTES, grad_bytes // 16))
    rows = max(1, budget // row_bytes)
    out = None
    for i in range(0, grad.shape[0], rows):
        part = grad[i:i + rows].to(acc_dtype).square().sum(dim=dims, keepdim=True)
        out = part if out is None else out.add_(part)
    return out.div_(n).to(grad.dtype)


def reduced_shape(shape: torch.Size | tuple[int, ...], dims: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of V for a parameter of ``shape``: the K dims set to 1."""
    return tuple(1 if i in dims else s for i, s in enumerate(shape))


def _single_tensor_slimadam(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
                            exp_avg_sqs: list[Tensor], state_steps: list[Tensor],
                            dims: list[tuple[int, ...]], hp: AdamHyper) -> None:
    for param, grad, exp_avg, exp_avg_sq, step_t, k in zip(params, grads, exp_avgs, exp_avg_sqs, state_steps, dims):
        grad = grad if not hp.maximize else -grad
        step_t += 1
        param.mul_(1 - hp.lr * hp.weight_decay)
        exp_avg.lerp_(grad, 1 - hp.beta1)
        if k:
            exp_avg_sq.mul_(hp.beta2).add_(mean_sq(grad, k), alpha=1 - hp.beta2)
        else:
            exp_avg_sq.mul_(hp.beta2).addcmul_(grad, grad, value=1 - hp.beta2)
        step = step_t.item()
        bias_correction1 = 1 - hp.beta1**step
        bias_correction2 = 1 - hp.beta2**step
        step_size = hp.lr / bias_correction1
        denom = (exp_avg_sq.sqrt() / bias_correction2**0.5).add_(hp.eps)
        param.addcdiv_(exp_avg, denom, value=-step_size)


def group_for_foreach(*lists: list, keys: list) -> dict:
    """Bucket parallel lists by key (device, dtype, dims) so each bucket is one batch of foreach calls."""
    buckets: dict = defaultdict(lambda: tuple([] for _ in lists))
    for i, key in enumerate(keys):
        for bucket, lst in zip(buckets[key], lists):
            bucket.append(lst[i])
    return dict(buckets)


def _trailing(grad: Tensor, dims: tuple[int, ...]) -> bool:
    """Whether mean_K can go through ``vector_norm`` (K trailing, or K not touching dim 0): see mean_sq."""
    return dims == tuple(range(grad.dim() - len(dims), grad.dim())) or 0 not in dims


def _update_second_moments(exp_avg_sqs: list[Tensor], grads: list[Tensor], k: tuple[int, ...], hp: AdamHyper) -> None:
    """V <- b2 V + (1 - b2) mean_K(G*G) for tensors sharing K, in as few foreach calls as the K allows."""
    torch._foreach_mul_(exp_avg_sqs, hp.beta2)
    if not k:
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - hp.beta2)
    elif all(_trailing(g, k) for g in grads):
        # One norm per tensor, then one call for the bucket: V += ((1 - b2) / n) * norm^2.
        norms = [torch.linalg.vector_norm(g, 2, dim=k, keepdim=True) for g in grads]
        scale = [(1 - hp.beta2) / prod(g.shape[d] for d in k) for g in grads]
        torch._foreach_addcmul_(exp_avg_sqs, norms, norms, scale)
    else:
        # One reduced tensor at a time: no full-size G*G list is ever alive.
        torch._foreach_add_(exp_avg_sqs, [mean_sq(g, k) for g in grads], alpha=1 - hp.beta2)


def _multi_tensor_slimadam(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
                           exp_avg_sqs: list[Tensor], state_steps: list[Tensor],
                           dims: list[tuple[int, ...]], hp: AdamHyper) -> None:
    """foreach SlimAdam. Only V's update depends on K, so everything else is one foreach call per
    (device, dtype) group; on CPU each foreach call is a loop over tensors costing ~1 us per tensor, and
    bucketing every op by K as well tripled those calls (a third of the step on a 1M-parameter GPT)."""
    keys = [(p.device, p.dtype) for p in params]
    buckets = group_for_foreach(params, grads, exp_avgs, exp_avg_sqs, state_steps, dims, keys=keys)
    for b_params, b_grads, b_exp_avgs, b_exp_avg_sqs, b_steps, b_dims in buckets.values():
        if hp.maximize:
            b_grads = torch._foreach_neg(b_grads)
        torch._foreach_add_(b_steps, 1)
        if hp.weight_decay != 0:
            torch._foreach_mul_(b_params, 1 - hp.lr * hp.weight_decay)
        torch._foreach_lerp_(b_exp_avgs, b_grads, 1 - hp.beta1)
        by_k: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, k in enumerate(b_dims):
            by_k[tuple(k)].append(i)
        for k, idx in by_k.items():
            if len(idx) == len(b_dims):
                _update_second_moments(b_exp_avg_sqs, b_grads, k, hp)
            else:
                _update_second_moments([b_exp_avg_sqs[i] for i in idx], [b_grads[i] for i in idx], k, hp)
        # p -= lr/bc1 * M / (sqrt(V)/bc2 + eps), written as p -= (lr bc2/bc1) * M / (sqrt(V) + eps bc2):
        # the same value to fp rounding, one foreach call fewer (each costs ~1 us per tensor on CPU).
        steps = [s.item() for s in b_steps]
        step_size: float | list[float]
        eps: float | list[float]
        if all(t == steps[0] for t in steps):  # the usual case: scalar arguments, no per-tensor lists
            bias_correction2_sqrt = (1 - hp.beta2 ** steps[0]) ** 0.5
            step_size = -(hp.lr * bias_correction2_sqrt / (1 - hp.beta1 ** steps[0]))
            eps = hp.eps * bias_correction2_sqrt
        else:
            bc2 = [(1 - hp.beta2**t) ** 0.5 for t in steps]
            step_size = [-(hp.lr * b / (1 - hp.beta1**t)) for t, b in zip(steps, bc2)]
            eps = [hp.eps * b for b in bc2]
        denom = torch._foreach_sqrt(b_exp_avg_sqs)  # reduced shapes: small unless k == ()
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(b_params, b_exp_avgs, denom, step_size)  # denom broadcasts over K
        del denom


def slimadam(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
             state_steps: list[Tensor], dims: list[tuple[int, ...]], *, hp: AdamHyper,
             foreach: bool = False, fused: bool = False, fused_backend: str = "auto") -> None:
    """Functional SlimAdam: see :class:`slimbench.SlimAdam` for the algorithm and the ``fused`` paths."""
    if foreach and fused:
        raise ValueError("`fused` and `foreach` cannot be `True` together.")
    if not params:
        return
    if fused:
        # imported here: the fused paths' modules are only needed when used
        from slimbench.optim._fused import _fused_slimadam

        _fused_slimadam(params, grads, exp_avgs, exp_avg_sqs, state_steps, dims, hp, fused_backend)
        return
    impl = _multi_tensor_slimadam if foreach else _single_tensor_slimadam
    impl(params, grads, exp_avgs, exp_avg_sqs, state_steps, dims, hp)
