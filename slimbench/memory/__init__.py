"""Optimizer-state memory: the ledger (what an optimizer holds, measured), the audit (any model size, on
the meta device, intent vs reality for SlimAdam) and the profile (peak and step-transient memory of a
real training step on CPU or CUDA).

    from slimbench.memory import audit, optimizer_ledger, profile
    res = audit("gpt2-small", ["adamw", "slimadam"])
    res.row("slimadam").ledger.second_moment_saved_fraction   # 0.998
"""
from slimbench.memory.audit import AuditResult, AuditRow, IntentRow, audit
from slimbench.memory.ledger import Ledger, LedgerEntry, optimizer_ledger, tensor_bytes
from slimbench.tasks.presets import PRESETS, build_model
from slimbench.memory.profile import LiveTensorTracker, ProfileResult, ProfileRow, StepMemory, profile, step_memory

__all__ = ["audit", "AuditResult", "AuditRow", "IntentRow", "optimizer_ledger", "Ledger", "LedgerEntry",
           "tensor_bytes", "PRESETS", "build_model", "profile", "ProfileResult", "ProfileRow", "step_memory",
           "StepMemory", "LiveTensorTracker"]
