"""Audit optimizer-state memory of a model without allocating it: meta device, real optimizer code.

For each optimizer the audit builds the model on the meta device (tensors with shapes and dtypes but no
memory), gives every parameter a meta gradient, runs the optimizer's own ``step()`` once so it creates its
state exactly as it would in training, and reads that state with :func:`slimbench.memory.ledger.
optimizer_ledger`. The numbers are therefore measured from the tensors the optimizer really creates, not
from a formula, and an 8B-parameter model is audited in seconds with no GBs allocated.

Some optimizers call ``.item()`` inside ``step()`` (Adafactor's RMS scaling), which meta tensors cannot
answer. For those the step is re-run with ``.item()`` on meta tensors answered by a placeholder (1.0);
state shapes never depend on that value, and the row's ``method`` says so. An optimizer that still cannot
step on meta, or whose package is missing, is skipped with the reason; the audit never crashes on one.

SlimAdam also gets an intent-vs-reality audit: the rule each parameter got, the V shape that rule means,
the V shape actually held, and which parameters fell back to full Adam (1-D by design, no rule matched,
a fused QKV weight left uncompressed).

With ``world_size`` the audit also predicts each rank's state bytes under FSDP2 (``fully_shard``), by exact
arithmetic on the measured state (:mod:`slimbench.memory.sharded`); still nothing is allocated.
"""
from __future__ import annotations

import contextlib
import io
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from math import prod
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from slimbench.env import provenance
from slimbench.memory.ledger import Ledger, optimizer_ledger
from slimbench.tasks.presets import build_model, preset_info
from slimbench.memory.sharded import RankBytes, param_bytes_per_rank, predict
from slimbench.registry import OptimizerUnavailable, build_optimizer, get_spec
from slimbench.rules import RulesLike, fingerprint, load_rules

AUDIT_FORMAT = "slimbench.audit"
AUDIT_VERSION = 1
DEFAULT_OPTIMIZERS = ("adamw", "slimadam", "adalayer", "adam-mini", "adafactor")

METHOD_META = "meta device: meta grads + one step()"
METHOD_META_STUB = "meta device: meta grads + one step(), .item() on meta answered 1.0 (values unused)"


class MetaScalarStub(TorchDispatchMode):
    """Answer ``.item()`` / ``bool()`` / ``float()`` on meta tensors with a placeholder instead of raising.

    Meta tensors have no values; an optimizer that reads a scalar to scale its step (Adafactor's
    parameter RMS) would otherwise stop before creating the state of later parameters. Real tensors
    pass through untouched. ``calls`` counts the answered reads.
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func is torch.ops.aten._local_scalar_dense.default and args[0].device.type == "meta":
            self.calls += 1
            t = args[0]
            return True if t.dtype == torch.bool else (1.0 if t.is_floating_point() else 1)
        return func(*args, **(kwargs or {}))


@dataclass(frozen=True)
class IntentRow:
    """What SlimAdam meant to do with one parameter, and what its state shows it did."""

    name: str
    shape: tuple[int, ...]
    layer_type: str
    rule: str | None
    dims: str  # label: none / fan_in / fan_out / both / "0,2"
    intended_v_shape: tuple[int, ...]
    actual_v_shape: tuple[int, ...] | None  # None: no exp_avg_sq held
    status: str  # compressed | compressed per block | full (1-D) | full (no rule) | full (fused QKV) | ...
    note: str = ""
    layout: str = ""  # where the layout came from: "nn.Linear (out, in)", "transformers Conv1D (in, out)", ...
    blocks: tuple[dict, ...] = ()  # a fused weight's blocks: role, shape, dims, label, v_shape, rule

    @property
    def fell_back(self) -> bool:
        return self.status.startswith("full") and len(self.shape) >= 2

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "layer_type": self.layer_type, "rule": self.rule,
                "dims": self.dims, "intended_v_shape": list(self.intended_v_shape),
                "actual_v_shape": None if self.actual_v_shape is None else list(self.actual_v_shape),
                "status": self.status, "fell_back": self.fell_back, "note": self.note, "layout": self.layout,
                **({"blocks": list(self.blocks)} if self.blocks else {})}


@dataclass
class AuditRow:
    """One optimizer in an audit: its measured ledger or why it was skipped."""

    optimizer: str
    status: str  # "ok" | "skipped"
    method: str = ""
    reason: str = ""  # why skipped
    ledger: Ledger | None = None
    vs_adamw: float | None = None  # state bytes / AdamW's state bytes on the same model
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)  # warnings the optimizer emitted, derived settings
    intent: list[IntentRow] = field(default_factory=list)  # SlimAdam only: rule vs state, per parameter
    v_dims: dict[str, tuple[int, ...]] | None = None  # SlimAdam only: K per parameter (places V under FSDP2)
    unshardable: list[str] = field(default_factory=list)  # parameters this optimizer refuses when sharded
    sharded: RankBytes | None = None  # per-rank prediction, when the audit has a world size

    def totals(self) -> dict:
        out: dict[str, Any] = {"optimizer": self.optimizer, "status": self.status, "method": self.method,
                               "reason": self.reason, "vs_adamw": self.vs_adamw, "seconds": self.seconds,
                               "notes": list(self.notes)}
        if self.sharded is not None:
            out["sharded"] = self.sharded.to_dict()
        elif self.unshardable:
            out["sharded"] = {"refused": list(self.unshardable)}
        if self.ledger is not None:
            t = self.ledger.totals()
            out.update({k: t[k] for k in ("state_bytes", "param_bytes", "ratio", "second_moments",
                                          "second_moment_saved_fraction", "state_tensors", "python_scalars",
                                          "by_key", "second_moment_keys", "second_moment_source")})
            out["optimizer_class"] = t["optimizer"]
        return out

    def to_dict(self, details: bool = False) -> dict:
        out = self.totals()
        if details and self.ledger is not None:
            out["entries"] = [e.to_dict() for e in self.ledger.entries]
        return out


@dataclass
class AuditResult:
    """A whole audit: model facts, one row per optimizer, SlimAdam's intent vs reality."""

    model: str
    model_info: dict
    dtype: str
    param_numel: int
    param_bytes: int
    rows: list[AuditRow]
    intent: list[IntentRow]
    rules: str | None  # fingerprint of SlimAdam's rules
    seconds: float
    provenance: dict
    world_size: int | None = None  # ranks of the FSDP2 prediction (None: no sharded prediction)
    param_bytes_per_rank: list[int] = field(default_factory=list)

    def row(self, name: str) -> AuditRow:
        return next(r for r in self.rows if r.optimizer == name)

    def intent_summary(self) -> dict:
        """Counts for SlimAdam's intent audit: compressed, fell back (>= 2-D), fused left uncompressed."""
        fell = [r for r in self.intent if r.fell_back]
        return {"parameters": len(self.intent),
                "compressed": sum(r.status.startswith("compressed") for r in self.intent),
                "compressed_per_block": [r.name for r in self.intent if r.status == "compressed per block"],
                "guessed_layouts": [r.name for r in self.intent if "assumed" in r.layout and len(r.shape) >= 2],
                "full_1d": sum(r.status == "full (1-D)" for r in self.intent),
                "fell_back": [r.name for r in fell],
                "fell_back_numel": sum(prod(r.shape) for r in fell),
                "fused_uncompressed": [r.name for r in self.intent if r.status == "full (fused QKV)"],
                "mismatches": [r.name for r in self.intent if r.status == "mismatch"]}

    def to_dict(self, details: bool = False) -> dict:
        out = {"format": AUDIT_FORMAT, "version": AUDIT_VERSION, "model": self.model, "model_info": self.model_info,
               "dtype": self.dtype, "param_numel": self.param_numel, "param_bytes": self.param_bytes,
               "rules": self.rules, "seconds": self.seconds,
               **({"world_size": self.world_size, "param_bytes_per_rank": self.param_bytes_per_rank}
                  if self.world_size else {}),
               "optimizers": [r.to_dict(details) for r in self.rows]}
        if self.intent:
            out["slimadam_intent"] = {"summary": self.intent_summary(),
                                      **({"parameters": [r.to_dict() for r in self.intent]} if details else {})}
        out["provenance"] = self.provenance
        return out


def _meta_model(model: str | nn.Module, dtype: torch.dtype) -> nn.Module:
    if isinstance(model, str):
        m = build_model(model, "meta")
    else:
        m = model
        if any(p.device.type != "meta" for p in m.parameters()):
            raise ValueError("audit needs a model on the meta device (build it under `with torch.device('meta')`) "
                             "or a preset name")
    if dtype != torch.float32:
        m = m.to(dtype)
    for p in m.parameters():
        if p.requires_grad:
            p.grad = torch.empty_like(p)  # meta: no memory
    return m


def _measure(name: str, model: str | nn.Module, dtype: torch.dtype, rules: RulesLike,
             extra: dict[str, Any]) -> AuditRow:
    """Build ``name`` on a fresh meta model, step once, ledger its state; never raises for one optimizer."""
    spec = get_spec(name)
    t0 = time.perf_counter()
    notes: list[str] = []
    kwargs = dict(extra)
    if spec.uses_rules and rules is not None:
        kwargs["rules"] = rules
    last_error = ""
    for method, stub in ((METHOD_META, False), (METHOD_META_STUB, True)):
        m = _meta_model(model, dtype)
        try:
            with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("always")
                opt = build_optimizer(name, m, **kwargs)
                if stub:
                    mode = MetaScalarStub()
                    with mode:
                        opt.step()
                else:
                    opt.step()
        except OptimizerUnavailable as e:
            return AuditRow(name, "skipped", reason=e.reason, seconds=time.perf_counter() - t0)
        except ValueError as e:  # a bad setting: the user's rules are loud, derived settings skip the row
            if spec.uses_rules and rules is not None:
                raise
            return AuditRow(name, "skipped", reason=f"ValueError: {e}", seconds=time.perf_counter() - t0)
        except Exception as e:  # noqa: BLE001 - third-party code on meta can fail in many ways
            last_error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            continue
        notes += sorted({f"{w.category.__name__}: {w.message}" for w in caught})
        if name == "adam-mini":
            notes.append(f"dim={opt.dim}, n_heads={opt.n_heads}, n_kv_heads={opt.n_kv_heads}")
        ledger = optimizer_ledger(opt, m)
        row = AuditRow(name, "ok", method, ledger=ledger, seconds=time.perf_counter() - t0, notes=notes)
        if name == "slimadam":
            row.intent = slimadam_intent(opt, ledger)
            row.v_dims = {n: tuple(a.dims) for n, a in opt.assignments.items()}
            row.unshardable = [n for n, a in opt.assignments.items() if a.blocks]
        return row
    return AuditRow(name, "skipped", reason=f"cannot step on the meta device ({last_error}); no analytic "
                    "count is kept for it", seconds=time.perf_counter() - t0)


def slimadam_intent(opt: Any, ledger: Ledger) -> list[IntentRow]:
    """Compare each SlimAdam assignment (rule -> dims) with the ``exp_avg_sq`` shape actually held."""
    held = {e.param: e.shape for e in ledger.entries if e.key == "exp_avg_sq"}
    rows = []
    for name, a in opt.assignments.items():
        intended = a.v_shape  # reduced over K, or 1-D (the blocks' V's) for a fused weight with blocks
        actual = held.get(name)
        if actual is None or tuple(actual) != tuple(intended):
            status = "mismatch"
        elif a.compressed and prod(actual) < prod(a.shape):
            status = "compressed per block" if a.blocks else "compressed"
        elif len(a.shape) < 2:
            status = "full (1-D)"
        elif a.layer_type in ("qkv_fused", "mlp_gate_up"):
            status = "full (fused QKV)"
        elif a.rule is None:
            status = "full (no rule)"
        else:
            status = "full (rule: none)"
        rows.append(IntentRow(name, a.shape, a.layer_type, a.rule, a.label, tuple(intended),
                              None if actual is None else tuple(actual), status, a.note,
                              a.layout.source if a.layout else "",
                              tuple(b.to_dict() for b in a.blocks)))
    return rows


def audit(model: str | nn.Module = "gpt2-small", optimizers: Sequence[str] = DEFAULT_OPTIMIZERS, *,
          rules: RulesLike = None, dtype: torch.dtype = torch.float32,
          extra: dict[str, dict[str, Any]] | None = None, world_size: int | None = None) -> AuditResult:
    """Audit the optimizer state of ``model`` for each optimizer, on the meta device.

    Args:
        model: a preset name (:data:`slimbench.tasks.presets.PRESETS`) or a module already on meta.
        optimizers: registry names; unknown names are a ValueError, unavailable ones become skipped rows.
        rules: SlimAdam rules (None: the registry default, the paper's rules).
        dtype: parameter dtype (state follows it; step counters stay fp32).
        extra: per-optimizer keyword arguments, e.g. ``{"galore": {"rank": 256}}``.
        world_size: also predict per-rank state bytes under FSDP2 over this many ranks (each row's
            ``sharded``; verified for specs with ``sharded=True``, a prediction for the others).

    AdamW is always measured as the reference for ``vs_adamw`` (listed only if asked for).
    """
    t0 = time.perf_counter()
    if world_size is not None and (isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1):
        raise ValueError(f"world_size must be an integer >= 1, got {world_size!r}")
    for name in optimizers:
        get_spec(name)  # unknown names fail before any work
    if isinstance(rules, (str, os.PathLike)) and rules != "paper":
        rules = load_rules(rules)  # a bad file fails here, once, with the file's own message
    extra = extra or {}
    names = list(dict.fromkeys(optimizers))
    rows = {n: _measure(n, model, dtype, rules, extra.get(n, {})) for n in names}
    ref = rows.get("adamw") or _measure("adamw", model, dtype, None, {})
    ref_bytes = ref.ledger.state_bytes if ref.ledger is not None else None
    for r in rows.values():
        if r.ledger is not None and ref_bytes:
            r.vs_adamw = r.ledger.state_bytes / ref_bytes
    m = _meta_model(model, dtype)
    params = [p for p in m.parameters()]
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    per_rank_params: list[int] = []
    if world_size is not None:
        shapes = {n: tuple(p.shape) for n, p in m.named_parameters()}
        per_rank_params = param_bytes_per_rank(shapes, params[0].element_size() if params else 4, world_size)
        for r in rows.values():
            if r.ledger is not None and not r.unshardable:
                r.sharded = predict(r.ledger, shapes, world_size, optimizer=r.optimizer,
                                    verified=get_spec(r.optimizer).sharded, v_dims=r.v_dims)
    intent = rows["slimadam"].intent if "slimadam" in rows else []
    info = preset_info(model) if isinstance(model, str) else {"name": type(model).__name__}
    return AuditResult(model if isinstance(model, str) else type(model).__name__, info,
                       str(dtype).removeprefix("torch."), sum(p.numel() for p in params), param_bytes,
                       [rows[n] for n in names], intent,
                       fingerprint(rules if rules is not None else "paper") if "slimadam" in names else None,
                       time.perf_counter() - t0, provenance("meta"), world_size, per_rank_params)
