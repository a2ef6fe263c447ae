r"""AdaLayer: Adam with one second moment per tensor (Zhao et al. 2024, "Deconstructing What Makes a
Good Optimizer for Language Models", arXiv:2407.07972).

Written independently of SlimAdam (its own update code, reducing with ``_foreach_norm``) so that the
property test "SlimAdam with K = all dims == AdaLayer" checks two implementations against each other.

The "AdaLayer+LN+TL" variant of Kalra et al. (2025) keeps full Adam for norm parameters and the last
layer (the head): ``AdaLayer(..., full_adam=("norm", "head"))`` or the registry name ``adalayer+ln+tl``.
Full-Adam tensors are updated by torch's own functional AdamW. Under FSDP2 each rank steps its shards and
the per-tensor sums of G^2 are added across ranks in one all-reduce per step (v is replicated).
"""
from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from slimbench.layers import LAYER_TYPES, layer_type
from slimbench.distributed import all_reduce_sums, is_sharded, local, local_grad, sharded_dims
from slimbench.optim._docs import splice
from slimbench.optim.slimadam import check_adam_hyper, default_foreach

_torch_adam = importlib.import_module("torch.optim.adam").adam  # torch's functional Adam/AdamW


class AdaLayer(Optimizer):
    r"""Adam with a scalar second moment per tensor:
    :math:`v_t = \beta_2 v_{t-1} + (1-\beta_2)\,\mathrm{mean}(G_t^2)`.

    Args:
        params: ``model.named_parameters()``, parameters, or param groups.
        lr, betas, eps, weight_decay: as in AdamW (decoupled weight decay).
        full_adam: layer types (see :mod:`slimbench.layers`) that keep a full per-entry V, e.g.
            ``("norm", "head")`` for AdaLayer+LN+TL. "norm" also covers biases and other 1-D tensors.
            Needs named parameters.
        {foreach}
    """

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, *, full_adam: tuple[str, ...] = (),
                 foreach: bool | None = None) -> None:
        check_adam_hyper(lr, betas, eps, weight_decay)
        unknown = [t for t in full_adam if t not in LAYER_TYPES]
        if unknown:
            raise ValueError(f"full_adam: unknown layer type(s) {unknown}; known: {', '.join(LAYER_TYPES)}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      foreach=foreach))
        self.full_adam = tuple(full_adam)
        for group in self.param_groups:
            names = group.get("param_names")
            if names is None and full_adam:
                raise ValueError("full_adam selects layers by name: pass model.named_parameters()")
            group["full_adam"] = [self._is_full(n, p) for n, p in zip(names or [""] * len(group["params"]),
                                                                      group["params"])]

    def _is_full(self, name: str, p: Tensor) -> bool:
        kind = layer_type(name, p.shape)
        if "norm" in self.full_adam and kind in ("norm", "bias", "vector"):
            return True
        return kind in self.full_adam

    @torch.no_grad()
    def step(self, closure: Any = None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            beta1, beta2 = group["betas"]
            layer = ([], [], [], [], [])  # params (local shards), grads, exp_avgs, exp_avg_sqs (0-d), steps
            full = ([], [], [], [], [])
            numels: list[int] = []
            split: list[bool] = []  # per tensor in `layer`: split over ranks, so its sum of G^2 is partial
            for p, is_full in zip(group["params"], group["full_adam"]):
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AdaLayer does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = (torch.zeros_like(p, memory_format=torch.preserve_format) if is_full
                                           else torch.zeros((), dtype=p.dtype, device=p.device))
                if is_full:  # torch's AdamW takes DTensors as they are
                    for lst, t in zip(full, (p, p.grad, state["exp_avg"], state["exp_avg_sq"], state["step"])):
                        lst.append(t)
                    continue
                for lst, t in zip(layer, (local(p), local_grad(p), local(state["exp_avg"]), state["exp_avg_sq"],
                                          state["step"])):
                    lst.append(t)
                numels.append(p.numel())  # the whole tensor's (a DTensor's numel is global)
                # a Replicate() DTensor (a tensor-parallel bias) holds the whole tensor: its sum is not reduced
                split.append(is_sharded(p) and bool(sharded_dims(p)))
            foreach = group["foreach"] if group["foreach"] is not None else default_foreach(group["params"])
            if full[0]:
                _torch_adam(*full[:4], [], full[4], foreach=foreach, decoupled_weight_decay=True, amsgrad=False,
                            beta1=beta1, beta2=beta2, lr=lr, weight_decay=wd, eps=eps, maximize=False)
            if layer[0]:
                _adalayer_update(*layer, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=wd, foreach=foreach,
                                 numels=numels if any(split) else None, split=split)
        return loss


AdaLayer.__doc__ = splice(AdaLayer.__doc__)


def _adalayer_update(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], vs: list[Tensor],
                     steps: list[Tensor], *, lr: float, beta1: float, beta2: float, eps: float,
                     weight_decay: float, foreach: bool, numels: list[int] | None = None,
                     split: list[bool] | None = None) -> None:
    """The layer-wise update: v is a 0-d tensor per parameter; mean(G^2) = ||G||^2 / numel.

    ``numels`` (the whole tensors' sizes) means the lists hold DTensor shards: each rank's ||G||^2 of a
    tensor split over ranks (``split``; default all) is summed across ranks in one all-reduce before
    dividing, so v is the same on every rank (a plain 0-d tensor); a replicated one's is already whole."""
    if numels is not None:
        sq = [g.square().sum() for g in grads]
        all_reduce_sums([s for s, cut in zip(sq, split or [True] * len(sq)) if cut])
        torch._foreach_add_(steps, 1)
        torch._foreach_mul_(params, 1 - lr * weight_decay)
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(vs, beta2)
        torch._foreach_add_(vs, [s / n for s, n in zip(sq, numels)], alpha=1 - beta2)
    elif foreach:
        norms = torch._foreach_norm(grads)
        torch._foreach_add_(steps, 1)
        if weight_decay:
            torch._foreach_mul_(params, 1 - lr * weight_decay)
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(vs, beta2)
        torch._foreach_add_(vs, [n.square() / g.numel() for n, g in zip(norms, grads)], alpha=1 - beta2)
    else:
        for p, g, m, v, s in zip(params, grads, exp_avgs, vs, steps):
            s += 1
            p.mul_(1 - lr * weight_decay)
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).add_(g.square().mean(), alpha=1 - beta2)
    for p, m, v, s in zip(params, exp_avgs, vs, steps):
        t = s.item()
        denom = (v.sqrt() / (1 - beta2**t) ** 0.5).add_(eps)
        p.addcdiv_(m, denom, value=-lr / (1 - beta1**t))
