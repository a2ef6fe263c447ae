"""The fused backends' contract: "can you take this tensor?" and "step this bucket".

A backend is one module with one object satisfying :class:`Backend`; the ordered list that decides who
runs what is ``slimbench.optim._fused.BACKENDS`` (native C kernel, [Triton when it lands], torch.compile,
foreach), chosen in one place, :func:`slimbench.optim._fused.chain`. Each backend steps what it takes
and returns the indices it left to the next one; the last one (foreach) takes everything, so a bucket
always finishes. A backend that cannot run here (no compiler, a compile error) leaves its tensors to the
next with one warning per distinct reason (:func:`warn_once`), never silently and never a crash.

Every backend computes mean_K(G*G) by the contract of :mod:`slimbench.optim._reduce`.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Protocol

from torch import Tensor

# The parallel lists every kernel takes: params, grads, exp_avgs, exp_avg_sqs, state_steps, dims.
Lists = tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor], list[Tensor], list[tuple[int, ...]]]

_warned: set[str] = set()


@dataclass(frozen=True)
class AdamHyper:
    """Hyperparameters of one param group for one step (read from the group every step)."""

    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    maximize: bool = False


class Backend(Protocol):
    """One way to run the fused update. ``scratch`` is a dict the caller keeps per call signature
    (:func:`slimbench.optim._checks.signature`), where a backend may cache its choices and plans."""

    name: str

    def takes(self, p: Tensor, k: tuple[int, ...]) -> bool:
        """Whether this backend can update a tensor like ``p`` with K = ``k`` (device, dtype, K; fixed per tensor)."""
        ...

    def step(self, lists: Lists, hp: AdamHyper, scratch: dict) -> list[int]:
        """Update the tensors it takes (incrementing their steps); return the indices of the others."""
        ...


def subset(lists: Lists, idx: list[int]) -> Lists:
    """The entries ``idx`` of every parallel list."""
    return tuple([lst[i] for i in idx] for lst in lists)  # type: ignore[return-value]


def warn_once(msg: str) -> None:
    """Warn once per distinct message (every fallback says why, once)."""
    if msg not in _warned:
        _warned.add(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=5)
