"""Train a task with Adam(W) while tracking SNR: the measurement behind ``python -m slimbench snr``.

The task is duck-typed (``model``, ``spec``, ``train_batch(step)``, ``loss(model, batch)``,
``describe()``, as :mod:`slimbench.tasks` builds them), so this module does not import the tasks package
and any object with that shape works. The loop is :func:`slimbench.loop.train`, the one benchmark runs use
(warmup then cosine via ``spec.lr_factor``, gradient clipping at ``spec.grad_clip``), so the SNR describes
the runs the rules are meant for, step for step; the paper measures with the same recipe as the run it
compresses. Unlike a benchmark run it stops only on a non-finite loss (no divergence factor), and an
optimizer step that raises propagates.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from slimbench.loop import train
from slimbench.snr.record import SNRRecord
from slimbench.snr.tracker import ScheduleLike, track_snr

OPTIMIZERS = ("adamw", "adam")


def make_adam(model: nn.Module, name: str, lr: float, betas: tuple[float, float],
              weight_decay: float) -> torch.optim.Optimizer:
    """torch's Adam (L2 weight decay) or AdamW (decoupled), as slimbench's registry builds them for runs.

    Over the trainable ``model.named_parameters()``, so the names travel with the optimizer.
    """
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r} for an SNR run; use one of {', '.join(OPTIMIZERS)}")


def run_snr(task: Any, *, lr: float | None = None, schedule: ScheduleLike = None, optimizer: str = "adamw",
            measure_last: bool = True, callback: Callable[[int, float], None] | None = None) -> SNRRecord:
    """Train ``task.model`` for ``task.spec.steps`` steps with Adam(W) and record SNR of its second moments.

    Args:
        task: a task (see the module docstring).
        lr: peak learning rate (default ``task.spec.lr``). SNR falls as lr grows (paper Sec. 4), so
            measure at the lr you will train with.
        schedule: when to measure (default: the paper's; see :class:`slimbench.snr.tracker.Schedule`).
        optimizer: "adamw" (decoupled weight decay ``spec.weight_decay``) or "adam" (the same as L2),
            the classes a ``python -m slimbench run`` of the task uses, but decaying every parameter (a run
            decays only tensors with >= 2 dims), as SNR records have always been measured.
        measure_last: also measure after the last step if the schedule did not.
        callback: called as ``callback(step, loss)`` after every step (1-based), e.g. a progress bar.

    A non-finite loss ends training at that step; the record says so in ``run["diverged_at"]``.
    """
    spec = task.spec
    model = task.model
    lr = float(spec.lr if lr is None else lr)
    if not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a finite number > 0, got {lr}")
    betas = tuple(getattr(spec, "betas", (0.9, 0.999)))
    wd = float(getattr(spec, "weight_decay", 0.0))
    clip = getattr(spec, "grad_clip", None)
    lr_factor = getattr(spec, "lr_factor", None)  # None: constant lr
    opt = make_adam(model, optimizer, lr, betas, wd)
    with track_snr(model, opt, schedule) as tracker:
        out = train(task, opt, steps=spec.steps, lr_factor=lr_factor, grad_clip=clip,
                    after_step=(lambda step, value: callback(step + 1, value)) if callback is not None else None)
        losses = out.completed_losses
        if measure_last and losses:
            tracker.measure(len(losses))
    diverged_at = out.divergence["step"] + 1 if out.divergence else None
    run = {"task": task.describe() if hasattr(task, "describe") else {}, "optimizer": optimizer, "lr": lr,
           "betas": list(betas), "weight_decay": wd, "grad_clip": clip,
           "steps": spec.steps, "steps_done": len(losses), "seed": getattr(task, "seed", None),
           "first_loss": losses[0] if losses else None,
           "last_loss": sum(losses[-10:]) / len(losses[-10:]) if losses else None, "diverged_at": diverged_at}
    return tracker.record(run=run)
