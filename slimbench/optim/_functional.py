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
last bit in the for-loop path and to fp rounding in the foreach path. mean_K is the one seam of
:mod:`slimbench.optim._reduce`; ``cross_rank`` (a :class:`~slimbench.optim._reduce.CrossRank`) says which
tensors' K includes a dim sharded across ranks: their sums are added across ranks in one collective per
call, before any V is updated. The public dispatcher, ``slimadam``, is in :mod:`slimbench.optim._dispatch`.
"""
from __future__ import annotations

from collections import defaultdict
from math import prod

import torch
from torch import Tensor

from slimbench.optim._backends import AdamHyper, Lists
from slimbench.optim._reduce import _BLOCK_BYTES, CrossRank, mean_sq, mean_sqs, reduced_shape, trailing

__all__ = ["AdamHyper", "FUSED_BACKENDS", "FOREACH", "group_for_foreach", "mean_sq", "reduced_shape", "_BLOCK_BYTES"]


# fused=True implementations: "auto" = the native CPU kernel where it applies, else torch.compile
# (slimbench.optim._fused); "compile" = torch.compile for every tensor.
FUSED_BACKENDS = ("auto", "compile", "triton")  # "triton": slimbench.optim._triton

def _single_tensor_slimadam(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
                            exp_avg_sqs: list[Tensor], state_steps: list[Tensor],
                            dims: list[tuple[int, ...]], hp: AdamHyper, cross_rank: CrossRank | None = None) -> None:
    terms = _cross_rank_terms(grads, dims, cross_rank)
    for i, (param, grad, exp_avg, exp_avg_sq, step_t, k) in enumerate(
            zip(params, grads, exp_avgs, exp_avg_sqs, state_steps, dims)):
        grad = grad if not hp.maximize else -grad
        step_t += 1
        param.mul_(1 - hp.lr * hp.weight_decay)
        exp_avg.lerp_(grad, 1 - hp.beta1)
        if k:
            exp_avg_sq.mul_(hp.beta2).add_(mean_sq(grad, k) if terms is None else terms[i], alpha=1 - hp.beta2)
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


def _cross_rank_terms(grads: list[Tensor], dims: list[tuple[int, ...]],
                      cross_rank: CrossRank | None) -> list[Tensor | None] | None:
    """mean_K(G*G) of every compressed tensor, computed up front when some tensor's K crosses ranks (one
    collective for the call); None otherwise, so unsharded runs compute each term where it is used."""
    if cross_rank is None or not cross_rank.any():
        return None
    idx = [i for i, k in enumerate(dims) if k]
    means = mean_sqs([grads[i] for i in idx], [tuple(dims[i]) for i in idx],
                     CrossRank(tuple(cross_rank.counts[i] for i in idx), cross_rank.all_reduce))
    terms: list[Tensor | None] = [None] * len(grads)
    for i, m in zip(idx, means):
        terms[i] = m
    return terms


def _update_second_moments(exp_avg_sqs: list[Tensor], grads: list[Tensor], k: tuple[int, ...], hp: AdamHyper,
                           terms: list[Tensor] | None = None) -> None:
    """V <- b2 V + (1 - b2) mean_K(G*G) for tensors sharing K, in as few foreach calls as the K allows
    (``terms``: mean_K(G*G) already computed, as when some K crosses ranks)."""
    torch._foreach_mul_(exp_avg_sqs, hp.beta2)
    if not k:
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - hp.beta2)
    elif terms is not None:
        torch._foreach_add_(exp_avg_sqs, terms, alpha=1 - hp.beta2)
    elif all(trailing(g, k) for g in grads):
        # One norm per tensor, then one call for the bucket: V += ((1 - b2) / n) * norm^2.
        norms = [torch.linalg.vector_norm(g, 2, dim=k, keepdim=True) for g in grads]
        scale = [(1 - hp.beta2) / prod(g.shape[d] for d in k) for g in grads]
        torch._foreach_addcmul_(exp_avg_sqs, norms, norms, scale)
    else:
        # One reduced tensor at a time: no full-size G*G list is ever alive.
        torch._foreach_add_(exp_avg_sqs, [mean_sq(g, k) for g in grads], alpha=1 - hp.beta2)


def _multi_tensor_slimadam(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
                           exp_avg_sqs: list[Tensor], state_steps: list[Tensor],
                           dims: list[tuple[int, ...]], hp: AdamHyper, cross_rank: CrossRank | None = None) -> None:
    """foreach SlimAdam. Only V's update depends on K, so everything else is one foreach call per
    (device, dtype) group; on CPU each foreach call is a loop over tensors costing ~1 us per tensor, and
    bucketing every op by K as well tripled those calls (a third of the step on a 1M-parameter GPT)."""
    keys = [(p.device, p.dtype) for p in params]
    terms = _cross_rank_terms(grads, dims, cross_rank)
    buckets = group_for_foreach(params, grads, exp_avgs, exp_avg_sqs, state_steps, dims,
                                terms if terms is not None else [None] * len(params), keys=keys)
    for b_params, b_grads, b_exp_avgs, b_exp_avg_sqs, b_steps, b_dims, b_terms in buckets.values():
        if terms is None:
            b_terms = None
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
            k_terms = None if b_terms is None or not k else [b_terms[i] for i in idx]
            if len(idx) == len(b_dims):
                _update_second_moments(b_exp_avg_sqs, b_grads, k, hp, k_terms)
            else:
                _update_second_moments([b_exp_avg_sqs[i] for i in idx], [b_grads[i] for i in idx], k, hp, k_terms)
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


class _Foreach:
    """The last fused backend: takes every tensor (what no faster backend took, or could not run)."""

    name = "foreach"

    def takes(self, p: Tensor, k: tuple[int, ...]) -> bool:
        return True

    def step(self, lists: Lists, hp: AdamHyper, scratch: dict) -> list[int]:
        _multi_tensor_slimadam(*lists, hp)
        return []


FOREACH = _Foreach()
