"""Audit vs ``torch.cuda.memory_allocated``: the meta-device audit's predicted optimizer state, checked
against what the CUDA caching allocator actually hands out in the first step (issue 14.3).

The audit (:func:`slimbench.memory.audit.audit`) measures state on the meta device, so its bytes are the
tensors' own sizes. On a GPU each state tensor is its own allocation, and the caching allocator rounds
every allocation up to a multiple of 512 bytes (``kMinBlockSize`` in c10/cuda/CUDACachingAllocator.cpp;
an empty tensor allocates nothing). So the prediction for the device is, per ledger entry that lives
with the parameters (not the CPU step counters, not storage already counted):

    predicted_device_bytes = sum(ceil(bytes / 512) * 512)

and it must equal ``memory_allocated()`` after the first ``step()`` minus before it (the step's
temporaries are freed by then; parameters and gradients exist before). A new model and optimizer per
row, on one device; no number is estimated: without CUDA, :func:`audit_vs_allocated` raises.
"""
from __future__ import annotations

import gc
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from slimbench.memory.ledger import Ledger

__all__ = ["ALLOCATOR_BLOCK", "AllocatedCheck", "AllocatedResult", "FORMAT", "allocator_bytes",
           "audit_vs_allocated", "predicted_device_bytes"]

FORMAT, VERSION = "slimbench.audit_vs_allocated", 1
ALLOCATOR_BLOCK = 512  # the CUDA caching allocator's rounding of every block (kMinBlockSize)
HOST = "cpu"  # ledger entries on this device (torch's and SlimAdam's step counters) never touch the GPU


def allocator_bytes(nbytes: int) -> int:
    """What the caching allocator reserves for a tensor of ``nbytes``: 0 for an empty one, else a multiple of 512."""
    if nbytes < 0:
        raise ValueError(f"nbytes must be >= 0, got {nbytes}")
    return -(-nbytes // ALLOCATOR_BLOCK) * ALLOCATOR_BLOCK


def predicted_device_bytes(ledger: Ledger) -> tuple[int, int]:
    """(bytes the allocator should hand out for this ledger's state, number of such tensors): every entry
    not on the host and not shared (a shared entry's storage is counted at its first entry, bytes 0)."""
    on_device = [e for e in ledger.entries if e.device != HOST and not e.shared]
    return sum(allocator_bytes(e.bytes) for e in on_device), len(on_device)


@dataclass(frozen=True)
class AllocatedCheck:
    """One optimizer: the audit's prediction and the allocator's growth over the first step."""

    optimizer: str
    state_bytes: int  # the audit's ledger, every device, unrounded
    predicted_device_bytes: int  # rounded per tensor, device entries only
    device_tensors: int
    measured_growth: int  # memory_allocated() after the first step minus before it

    @property
    def equal(self) -> bool:
        return self.measured_growth == self.predicted_device_bytes

    def to_dict(self) -> dict:
        return {"optimizer": self.optimizer, "state_bytes": self.state_bytes,
                "predicted_device_bytes": self.predicted_device_bytes, "device_tensors": self.device_tensors,
                "measured_growth": self.measured_growth, "equal": self.equal,
                "difference": self.measured_growth - self.predicted_device_bytes}


@dataclass
class AllocatedResult:
    model: str
    device: str
    rows: list[AllocatedCheck]
    provenance: dict = field(default_factory=dict)

    @property
    def all_equal(self) -> bool:
        return all(r.equal for r in self.rows)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "model": self.model, "device": self.device,
                "method": f"audit (meta) per-tensor bytes rounded up to {ALLOCATOR_BLOCK} vs "
                          "torch.cuda.memory_allocated() growth over the first step()",
                "all_equal": self.all_equal, "rows": [r.to_dict() for r in self.rows],
                "provenance": self.provenance}


def _first_step_growth(model_name: str, optimizer: str, device: torch.device) -> int:
    from slimbench.registry import build_optimizer
    from slimbench.tasks.presets import build_model

    model = build_model(model_name, device)
    opt = build_optimizer(optimizer, model)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # allocated before the baseline: only the optimizer's state is new
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    opt.step()
    torch.cuda.synchronize(device)
    growth = torch.cuda.memory_allocated(device) - before
    del opt, model
    gc.collect()
    torch.cuda.empty_cache()
    return growth


def audit_vs_allocated(model: str = "gpt2-tiny", optimizers: Sequence[str] = ("adamw", "slimadam"),
                       device: str | torch.device = "cuda") -> AllocatedResult:
    """Check the audit's prediction against the allocator for each optimizer (registry defaults; SlimAdam
    with the paper's rules) on preset ``model``. Raises RuntimeError without a CUDA device."""
    from slimbench.env import provenance
    from slimbench.memory.audit import audit

    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        raise RuntimeError(f"audit_vs_allocated needs a CUDA device (got {device!r}, "
                           f"torch.cuda.is_available() is {torch.cuda.is_available()})")
    predicted = audit(model, list(optimizers))
    rows = []
    for name in optimizers:
        ledger = predicted.row(name).ledger
        if ledger is None:
            raise RuntimeError(f"the audit could not measure {name}: {predicted.row(name).reason}")
        want, n = predicted_device_bytes(ledger)
        rows.append(AllocatedCheck(name, ledger.state_bytes, want, n, _first_step_growth(model, name, dev)))
    return AllocatedResult(model, str(dev), rows, provenance(dev))
