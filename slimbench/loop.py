"""The one training loop: benchmark runs, SNR runs and fine-tune pre-training all step through :func:`train`.

    from slimbench.loop import train
    out = train(task, optimizer, steps=spec.steps, lr_factor=spec.lr_factor, grad_clip=spec.grad_clip)

Per step (0-based):
    before_step(step)                                      (not timed: e.g. validation)
    loss = task.loss(task.model, task.train_batch(step))
    stop if loss is not finite, or > divergence_factor x (loss at step 0) when a factor is given
    zero_grad; backward; clip the global grad norm to grad_clip (if any); optimizer.step()
    stop if that step raised an "overflow" RuntimeError and overflow_is_divergence (else it propagates)
    scheduler.step()                                       (LambdaLR(optimizer, lr_factor); not after the last step)
    after_step(step, loss)                                 (not timed: e.g. the state ledger, progress)
A stop calls ``on_stop(step, loss)`` instead of ``after_step``. The schedule is not advanced after the last
step, so ``param_groups[*]["lr"]`` afterwards is the lr that step used (what an SNR measurement taken after the
loop records). Because every caller shares this code, an SNR run and a benchmark run of the same
optimizer, task, seed and lr see the same numbers step for step.

The task is duck-typed (``model``, ``train_batch(step)``, ``loss(model, batch)``); this module depends on
torch and the standard library only, so tasks/, snr/ and bench/ can all use it.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

StepHook = Callable[[int, float], None]  # (step, loss as a float)


@dataclass
class LoopResult:
    """What happened, step by step. A stopped step has its loss in ``train_loss`` and nothing else."""

    train_loss: list[float] = field(default_factory=list)  # every step's loss, the stopping one included
    grad_norm: list[float] = field(default_factory=list)  # global grad norm before clipping, completed steps
    lr: list[float] = field(default_factory=list)  # param_groups[0]["lr"] each completed step used
    step_time_s: list[float] = field(default_factory=list)  # batch + forward + backward + step, completed steps
    divergence: dict | None = None  # {"step", "loss" (repr), "reason"} when a stop condition ended the loop

    @property
    def steps_done(self) -> int:
        """Optimizer steps completed."""
        return len(self.step_time_s)

    @property
    def completed_losses(self) -> list[float]:
        """The losses of the completed steps (the stopping step's loss left out)."""
        return self.train_loss[:self.steps_done]


def _stop_reason(value: float, first: float, divergence_factor: float | None) -> str | None:
    if not math.isfinite(value):
        return "loss is not finite"
    if divergence_factor is not None and value > divergence_factor * first:
        return f"loss > {divergence_factor:g} x initial loss ({divergence_factor * first:.4g})"
    return None


def _grad_norm(params: list[nn.Parameter], grad_clip: float | None) -> torch.Tensor:
    """Clip to ``grad_clip`` (when set) and return the global norm before clipping, as clip_grad_norm_ does."""
    if grad_clip:
        return nn.utils.clip_grad_norm_(params, grad_clip)
    return nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])


def train(task: Any, optimizer: torch.optim.Optimizer, *, steps: int,
          lr_factor: Callable[[int], float] | None = None, grad_clip: float | None = None,
          divergence_factor: float | None = None, overflow_is_divergence: bool = False,
          before_step: Callable[[int], None] | None = None, after_step: StepHook | None = None,
          on_stop: StepHook | None = None, scalar: Callable[[torch.Tensor], float] = float) -> LoopResult:
    """Train ``task.model`` with ``optimizer`` for ``steps`` steps (see the module docstring).

    Args:
        task: has ``model``, ``train_batch(step)`` and ``loss(model, batch)``.
        optimizer: over ``task.model``'s parameters, at its peak lr.
        steps: how many steps.
        lr_factor: step -> multiple of the optimizer's lr (``LambdaLR``); None: constant lr.
        grad_clip: max global grad norm over the trainable parameters; None or 0: no clipping.
        divergence_factor: also stop when the loss exceeds this multiple of the first loss.
        overflow_is_divergence: an optimizer step raising a RuntimeError that says "overflow" (e.g. at
            lr=1e300) stops the loop as a divergence instead of propagating.
        before_step, after_step, on_stop: hooks (see the module docstring); their time is not counted.
        scalar: turns the grad norm tensor into a float (FSDP passes one that gathers a DTensor).
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    model = task.model
    params = [p for p in model.parameters() if p.requires_grad]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor or (lambda step: 1.0))
    out = LoopResult()
    model.train()
    for step in range(steps):
        if before_step:
            before_step(step)
        t0 = time.perf_counter()
        loss = task.loss(model, task.train_batch(step))
        value = loss.item()
        out.train_loss.append(value)
        reason = _stop_reason(value, out.train_loss[0], divergence_factor)
        if reason is None:
            lr = optimizer.param_groups[0]["lr"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norm = scalar(_grad_norm(params, grad_clip))
            try:
                optimizer.step()
            except RuntimeError as e:  # lr=1e300: the step itself overflows; such a run can only diverge
                if not overflow_is_divergence or "overflow" not in str(e):
                    raise
                reason = f"optimizer step overflowed ({e})"
        if reason is not None:
            out.divergence = {"step": step, "loss": repr(value), "reason": reason}
            if on_stop:
                on_stop(step, value)
            break
        if step + 1 < steps:
            scheduler.step()
        out.step_time_s.append(time.perf_counter() - t0)
        out.lr.append(lr)
        out.grad_norm.append(norm)
        if after_step:
            after_step(step, value)
    return out
