"""Peak memory of a training step per optimizer: parameters, gradients, optimizer state, step transient.

Split of one training step (zero_grad(set_to_none) -> forward -> backward -> step):

    params      bytes of the parameters (unique storages)
    grads       bytes of the gradients after backward
    state       optimizer state after warm-up steps (steady; measured by the ledger)
    fwd_bwd     peak of new tensors during forward + backward (activations and gradients)
    transient   peak of new tensors during ``step()`` (foreach lists, ``denom``, reductions), over the
                live memory at the start of the step; ``retained`` is what ``step()`` left allocated
    peak        params + state + the peak of new tensors over the whole step

How it is measured, reported as ``method`` in every result:

* CUDA: ``torch.cuda.reset_peak_memory_stats`` / ``memory_allocated`` / ``max_memory_allocated`` around
  each phase, with ``torch.cuda.synchronize``; these are the caching allocator's exact counts, including
  kernel scratch. Optionally a memory snapshot (``torch.cuda.memory._dump_snapshot``) of the measured
  step, viewable at https://pytorch.org/memory_viz.
* CPU: :class:`LiveTensorTracker`, a ``TorchDispatchMode`` that sees every aten op, adds the bytes of each
  new output storage (an output that aliases an input is not new) and subtracts them when the storage is
  freed (a weakref callback on the storage). This counts tensors the way the CUDA allocator would see
  them, minus kernel-internal scratch buffers that never become tensors, and minus allocator rounding.
  torch.profiler's ``profile_memory`` was tried first; on CPU it missed allocations and prints to stdout.

The transient is checked against a per-optimizer budget (:func:`slimbench.registry.transient_budget`),
as PyTorch's ``test_peak_memory_foreach`` bounds the temporaries of its foreach optimizers.
"""
from __future__ import annotations

import contextlib
import io
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from slimbench.env import provenance
from slimbench.memory.ledger import optimizer_ledger, storage_key, tensor_bytes
from slimbench.modelspec import ModelSpec, resolve_model, vocab_size
from slimbench.registry import OptimizerUnavailable, build_optimizer, get_spec, transient_budget

PROFILE_FORMAT = "slimbench.profile"
PROFILE_VERSION = 1
METHOD_CPU = "cpu: live tensor bytes of op outputs (TorchDispatchMode storage tracking; no kernel scratch)"
METHOD_CUDA = "cuda: torch.cuda.max_memory_allocated around each phase, synchronized"


@dataclass
class PhaseMemory:
    """Live tracked bytes at the start and end of a phase, and the most seen in between."""

    start: int = 0
    peak: int = 0
    end: int = 0

    @property
    def transient(self) -> int:
        return self.peak - self.start

    @property
    def retained(self) -> int:
        return self.end - self.start


class LiveTensorTracker(TorchDispatchMode):
    """Track bytes of tensors created while active; free is seen through a weakref on the storage.

    ``live`` is the bytes of storages created under the tracker and still alive, ``peak`` the most it
    has been. Use :meth:`phase` to record a phase's start / peak / end. Meta tensors are ignored.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._tracked: dict[int, tuple[weakref.ref, int]] = {}
        self._phases: list[PhaseMemory] = []
        self.phases: dict[str, PhaseMemory] = {}

    def _on_free(self, key: int, nbytes: int) -> None:
        if self._tracked.pop(key, None) is not None:
            self.live -= nbytes

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        inputs = {storage_key(t) for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor)}
        out = func(*args, **kwargs)
        for t in tree_leaves(out):
            if not isinstance(t, Tensor) or t.device.type == "meta":
                continue
            st = t.untyped_storage()
            key = st._cdata
            if key in inputs or key in self._tracked:
                continue  # a view or in-place result of an input, or already counted
            n = st.nbytes()
            self._tracked[key] = (weakref.ref(st, lambda _r, k=key, n=n: self._on_free(k, n)), n)
            self.live += n
            self.peak = max(self.peak, self.live)
            for ph in self._phases:
                ph.peak = max(ph.peak, self.live)
        return out

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[PhaseMemory]:
        ph = PhaseMemory(self.live, self.live, self.live)
        self._phases.append(ph)
        try:
            yield ph
        finally:
            self._phases.remove(ph)
            ph.end = self.live
            self.phases[name] = ph


@dataclass
class StepMemory:
    """Memory of one ``optimizer.step()``: transient peak over the start, and bytes left allocated."""

    transient_bytes: int
    retained_bytes: int
    method: str

    def to_dict(self) -> dict:
        return {"transient_bytes": self.transient_bytes, "retained_bytes": self.retained_bytes,
                "method": self.method}


def _device_of(optimizer: torch.optim.Optimizer) -> torch.device:
    return next(p.device for g in optimizer.param_groups for p in g["params"])


def step_memory(optimizer: torch.optim.Optimizer, closure: Any = None) -> StepMemory:
    """Run ``optimizer.step()`` once and measure its transient memory (CUDA allocator or CPU tracker).

    Gradients must already be set. Call after a warm-up step so lazily created state is not counted as
    transient (it shows up in ``retained_bytes`` otherwise).
    """
    device = _device_of(optimizer)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        optimizer.step(closure)
        torch.cuda.synchronize(device)
        return StepMemory(torch.cuda.max_memory_allocated(device) - base,
                          torch.cuda.memory_allocated(device) - base, METHOD_CUDA)
    tracker = LiveTensorTracker()
    with tracker, tracker.phase("step") as ph:
        optimizer.step(closure)
    return StepMemory(ph.transient, ph.retained, METHOD_CPU)


@dataclass
class ProfileRow:
    """One optimizer's memory over a training step."""

    optimizer: str
    status: str  # "ok" | "skipped"
    reason: str = ""
    method: str = ""
    device: str = "cpu"
    foreach: bool | None = None
    param_bytes: int = 0
    largest_param_bytes: int = 0
    grad_bytes: int = 0
    state_bytes: int = 0
    fwd_bwd_bytes: int = 0
    transient_bytes: int = 0
    retained_bytes: int = 0
    peak_bytes: int = 0
    budget_bytes: int = 0
    second_moment_saved_fraction: float | None = None
    step_seconds: float = 0.0
    snapshot: str | None = None

    @property
    def within_budget(self) -> bool | None:
        return None if self.status != "ok" else self.transient_bytes <= self.budget_bytes

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["within_budget"] = self.within_budget
        return d


@dataclass
class ProfileResult:
    model: str
    device: str
    dtype: str
    batch_size: int
    seq_len: int
    warmup: int
    rows: list[ProfileRow]
    provenance: dict = field(default_factory=dict)

    def row(self, name: str) -> ProfileRow:
        return next(r for r in self.rows if r.optimizer == name)

    def to_dict(self) -> dict:
        return {"format": PROFILE_FORMAT, "version": PROFILE_VERSION, "model": self.model, "device": self.device,
                "dtype": self.dtype, "batch_size": self.batch_size, "seq_len": self.seq_len, "warmup": self.warmup,
                "optimizers": [r.to_dict() for r in self.rows], "provenance": self.provenance}


def _batch(vocab: int, batch_size: int, seq_len: int, device: torch.device, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator(device="cpu").manual_seed(seed)
    idx = torch.randint(0, vocab, (batch_size, seq_len + 1), generator=g).to(device)
    return idx[:, :-1], idx[:, 1:]


def _profile_one(name: str, mspec: ModelSpec, device: torch.device, dtype: torch.dtype, foreach: bool | None,
                 batch_size: int, seq_len: int, warmup: int, seed: int, lr: float,
                 snapshot_dir: Path | None) -> ProfileRow:
    spec = get_spec(name)
    model = mspec.build(device, seed=seed).to(dtype)
    x, y = _batch(vocab_size(model), batch_size, seq_len, device, seed)
    kw: dict[str, Any] = {}
    if foreach is not None and spec.foreach:
        kw["foreach"] = foreach
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            opt = build_optimizer(name, model, lr=lr, **kw)
    except OptimizerUnavailable as e:
        return ProfileRow(name, "skipped", reason=e.reason, device=str(device))

    def fwd_bwd() -> None:
        opt.zero_grad(set_to_none=True)
        mspec.lm_loss(model, x, y).backward()

    for _ in range(max(1, warmup)):  # lazily created state exists after the first step
        fwd_bwd()
        opt.step()
    params = [p for p in model.parameters()]
    param_bytes = tensor_bytes(params)
    largest = max(p.numel() * p.element_size() for p in params)
    ledger = optimizer_ledger(opt, model)
    state_bytes = ledger.state_bytes
    opt.zero_grad(set_to_none=True)
    snapshot = None

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        if snapshot_dir is not None:
            torch.cuda.memory._record_memory_history(max_entries=100_000)
        mspec.lm_loss(model, x, y).backward()
        torch.cuda.synchronize(device)
        fwd_bwd_peak = torch.cuda.max_memory_allocated(device) - base
        pre_step = torch.cuda.memory_allocated(device) - base  # gradients (activations are freed)
        t0 = time.perf_counter()
        sm = step_memory(opt)
        step_seconds = time.perf_counter() - t0
        peak_new = max(fwd_bwd_peak, pre_step + sm.transient_bytes)
        if snapshot_dir is not None:
            snapshot_dir.mkdir(parents=True, exist_ok=True)
            label = "".join(c if c.isalnum() or c in "-_." else "_" for c in mspec.text)
            snapshot = str(snapshot_dir / f"{label}-{name}.pickle")
            torch.cuda.memory._dump_snapshot(snapshot)
            torch.cuda.memory._record_memory_history(enabled=None)
        grad_bytes = tensor_bytes(p.grad for p in params)
        transient, retained, method = sm.transient_bytes, sm.retained_bytes, sm.method
    else:
        tracker = LiveTensorTracker()
        with tracker:
            with tracker.phase("fwd_bwd") as fb:
                mspec.lm_loss(model, x, y).backward()
            grad_bytes = tensor_bytes(p.grad for p in params)
            t0 = time.perf_counter()
            with tracker.phase("step") as st:
                opt.step()
            step_seconds = time.perf_counter() - t0  # includes tracking overhead; not a timing benchmark
        fwd_bwd_peak, peak_new = fb.transient, tracker.peak
        transient, retained, method = st.transient, st.retained, METHOD_CPU
    return ProfileRow(name, "ok", method=method, device=str(device), foreach=kw.get("foreach"),
                      param_bytes=param_bytes, largest_param_bytes=largest, grad_bytes=grad_bytes,
                      state_bytes=state_bytes, fwd_bwd_bytes=fwd_bwd_peak, transient_bytes=transient,
                      retained_bytes=retained, peak_bytes=param_bytes + state_bytes + peak_new,
                      budget_bytes=transient_budget(spec, param_bytes, largest),
                      second_moment_saved_fraction=ledger.second_moment_saved_fraction,
                      step_seconds=step_seconds, snapshot=snapshot)


def profile(model: str | ModelSpec = "gpt2-tiny", optimizers: Sequence[str] = ("adamw", "slimadam", "adalayer"), *,
            device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, foreach: bool | None = None,
            batch_size: int = 4, seq_len: int = 32, warmup: int = 2, seed: int = 0, lr: float = 1e-3,
            snapshot_dir: str | Path | None = None) -> ProfileResult:
    """Memory of a training step of preset ``model`` for each optimizer (see the module docstring).

    Args:
        model: a preset name or a :class:`slimbench.modelspec.ModelSpec` (``resolve_model("hf:gpt2", {...})``),
            a token model: forward(token ids) gives next-token logits (presets: the loss). Profiles allocate
            for real, so use a size that fits (``gpt2-tiny``).
        optimizers: registry names; unavailable ones become skipped rows.
        device: "cpu" or "cuda[:i]".
        foreach: implementation flag passed to optimizers that support it (None: their default).
        warmup: full steps before measuring, so lazily created state is steady.
        snapshot_dir: CUDA only: write a memory snapshot of the measured step per optimizer there.
    """
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch.cuda.is_available() is False")
    if snapshot_dir is not None and dev.type != "cuda":
        raise ValueError("memory snapshots need a CUDA device")
    mspec = model if isinstance(model, ModelSpec) else resolve_model(model)
    if mspec.max_positions is not None and seq_len > mspec.max_positions:
        raise ValueError(f"seq_len {seq_len} exceeds {mspec.name}'s block_size (context) of {mspec.max_positions}")
    probe = mspec.build("meta")  # fail once, before any optimizer, when the model cannot take token ids
    if getattr(probe, "main_input_name", "input_ids") != "input_ids":
        raise ValueError(f"cannot profile {mspec.name}: it takes {probe.main_input_name}, not token ids")
    if vocab_size(probe) is None:
        raise ValueError(f"cannot profile {mspec.name}: it has no token embedding (profile needs a token model)")
    for name in optimizers:
        get_spec(name)
    rows = []
    for name in dict.fromkeys(optimizers):
        try:
            rows.append(_profile_one(name, mspec, dev, dtype, foreach, batch_size, seq_len, warmup, seed, lr,
                                     Path(snapshot_dir) if snapshot_dir is not None else None))
        except OptimizerUnavailable as e:
            rows.append(ProfileRow(name, "skipped", reason=e.reason, device=str(dev)))
        except Exception as e:  # noqa: BLE001 - one optimizer failing (bad settings included) must not end the profile
            rows.append(ProfileRow(name, "skipped", reason=f"{type(e).__name__}: {e}", device=str(dev)))
    return ProfileResult(mspec.name, str(dev), str(dtype).removeprefix("torch."), batch_size, seq_len, warmup, rows,
                         provenance(dev))
