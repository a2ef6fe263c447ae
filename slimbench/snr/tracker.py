"""Track the SNR of Adam's second moments while a model trains (paper Sec. 4, "SNR analysis").

The tracker hangs on ``optimizer.register_step_post_hook``, so it works with any training loop and any
Adam-family optimizer whose state holds the full second moment as ``exp_avg_sq`` (torch.optim.Adam/AdamW,
SlimAdam with K = ()). At the steps of its schedule it reads V of every parameter with >= 2 dims and
records the SNR of every candidate K (:func:`slimbench.snr.stats.candidates`).

    opt = torch.optim.AdamW(model.named_parameters(), lr=1e-3)
    with track_snr(model, opt) as tracker:
        for step in range(steps):
            ...; loss.backward(); opt.step(); opt.zero_grad()
    tracker.record(run={"data": "my corpus"}).save("snr.json")

The hook also times itself against the training step (the wall time between two hook calls), so the
record states what measuring cost.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, Union

import torch
from torch import Tensor, nn

from slimbench.distributed import is_sharded
from slimbench.env import provenance
from slimbench.layers import layer_type
from slimbench.layouts import model_layouts
from slimbench.snr.record import ParamInfo, SNRRecord
from slimbench.snr.stats import candidates, dims_key, snr_many


def _canonical(v: Tensor, fan_out: tuple[int, ...], fan_in: tuple[int, ...]) -> Tensor:
    """``v`` with its fan_out dims first (merged into one) and its fan_in dims after, as stored by nn.Linear."""
    x = v.permute(*fan_out, *fan_in)
    return x.reshape(-1, *x.shape[len(fan_out):]) if len(fan_out) > 1 else x


def _canonical_shape(shape: tuple[int, ...], fan_out: tuple[int, ...], fan_in: tuple[int, ...]) -> tuple[int, ...]:
    out = 1
    for d in fan_out:
        out *= shape[d]
    return (out, *(shape[d] for d in fan_in))


@dataclass(frozen=True)
class Schedule:
    """When to measure: every ``every`` steps up to ``until``, then every ``then_every`` steps.

    The default is the paper's cadence: step 1 (``first``), then every 100 steps throughout (measuring
    only every 1000 after step 1000 changed 35 of 74 rules on the paper's own GPT-2 SNR data). Steps
    count from 1 (the optimizer's own ``step`` after the update).
    """

    every: int = 100
    until: int = 0
    then_every: int = 100
    first: bool = True

    def __post_init__(self) -> None:
        for name in ("every", "then_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"schedule {name} must be >= 1, got {getattr(self, name)}")

    def __call__(self, step: int) -> bool:
        if self.first and step == 1:
            return True
        return step % (self.every if step < self.until else self.then_every) == 0

    def to_dict(self) -> dict:
        return {"kind": "schedule", **asdict(self)}

    @classmethod
    def parse(cls, spec: str) -> Schedule:
        """``"default"``, ``"every:N"`` (every N steps) or ``"E/U/T"`` (every E until U, then every T)."""
        s = spec.strip().lower()
        try:
            if s in ("default", "paper"):
                return cls()
            if s.startswith("every:"):
                n = int(s[6:])
                return cls(every=n, until=0, then_every=n, first=False)
            e, u, t = (int(x) for x in s.split("/"))
            return cls(every=e, until=u, then_every=t)
        except ValueError as err:
            if "must be >= 1" in str(err):
                raise
            raise ValueError(f"bad schedule {spec!r}: use 'default', 'every:N' or 'EVERY/UNTIL/THEN'") from None


ScheduleLike = Union[Schedule, int, Iterable[int], Callable[[int], bool], None]


def _as_schedule(schedule: ScheduleLike | str) -> tuple[Callable[[int], bool], dict]:
    if schedule is None:
        schedule = Schedule()
    if isinstance(schedule, str):
        schedule = Schedule.parse(schedule)
    if isinstance(schedule, Schedule):
        return schedule, schedule.to_dict()
    if isinstance(schedule, int):
        sched = Schedule(every=schedule, until=0, then_every=schedule, first=False)
        return sched, sched.to_dict()
    if callable(schedule):
        return schedule, {"kind": "callable", "repr": repr(schedule)}
    steps = frozenset(int(s) for s in schedule)
    return steps.__contains__, {"kind": "steps", "steps": sorted(steps)}


class SNRTracker:
    """Reads V from an Adam-family optimizer at scheduled steps and records its SNR per candidate K.

    Args:
        model: the model being trained (names and shapes of its parameters; its class goes in the record).
        optimizer: a torch optimizer with ``exp_avg_sq`` state (Adam, AdamW, SlimAdam with K = ()).
        schedule: a :class:`Schedule` (default: the paper's), an int N (every N steps, from step N), an iterable of
            steps, or a callable ``step -> bool``.
        dtype: precision of the SNR computation (float64: tiny V entries would underflow float32).

    Use :func:`track_snr` to create and attach in one call.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, schedule: ScheduleLike = None, *,
                 dtype: torch.dtype = torch.float64) -> None:
        self.model = model
        self.optimizer = optimizer
        self.should_measure, self._schedule_info = _as_schedule(schedule)
        self.dtype = dtype
        names: dict[int, str] = {id(p): n for n, p in model.named_parameters()}
        for gi, group in enumerate(optimizer.param_groups):  # names the optimizer knows, if the model doesn't
            for i, p in enumerate(group["params"]):
                pnames = group.get("param_names")
                names.setdefault(id(p), pnames[i] if pnames else f"group{gi}.param{i}")
        self._layouts = model_layouts(model)  # layouts come from the model's modules (slimbench.layouts)
        self._params: list[tuple[str, Tensor]] = []
        seen: set[int] = set()
        for group in optimizer.param_groups:
            for p in group["params"]:
                if id(p) not in seen:
                    seen.add(id(p))
                    self._params.append((names[id(p)], p))
        self._by_name = dict(self._params)
        self.steps: list[int] = []
        self.lrs: list[float | None] = []  # lr of the first param group at each measured step
        self._snr: dict[str, dict[str, list[float | None]]] = {}
        self.skipped: dict[str, str] = {}
        self._step: int | None = None
        self._handle: Any = None
        self._measure_s = 0.0  # time inside the hook (all calls)
        self._calls = 0
        self._train_s = 0.0  # wall time between hook calls: forward, backward, optimizer step, data
        self._timed = 0
        self._last_end: float | None = None

    # -- attaching ---------------------------------------------------------------------------------
    def attach(self) -> SNRTracker:
        """Start measuring after every ``optimizer.step()``."""
        if self._handle is None:
            self._handle = self.optimizer.register_step_post_hook(self._hook)
        return self

    def detach(self) -> None:
        """Stop measuring (the record so far is kept)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._last_end = None

    def __enter__(self) -> SNRTracker:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    # -- measuring ---------------------------------------------------------------------------------
    def _optimizer_step(self) -> int:
        """The optimizer's own step count (so a tracker attached mid-run numbers steps correctly)."""
        for _, p in self._params:
            st = self.optimizer.state.get(p)
            if st and "step" in st:
                return int(float(st["step"]))
        return (self._step or 0) + 1

    def _hook(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        start = time.perf_counter()
        if self._last_end is not None:
            self._train_s += start - self._last_end
            self._timed += 1
        # Read the step from the state once; counting afterwards avoids a device sync per step.
        self._step = self._optimizer_step() if self._step is None else self._step + 1
        if self.should_measure(self._step):
            self.measure(self._step)
        end = time.perf_counter()
        self._measure_s += end - start
        self._calls += 1
        self._last_end = end

    @torch.no_grad()
    def measure(self, step: int | None = None) -> None:
        """Measure now (the hook calls this on schedule; call it yourself e.g. after the last step).

        A step already measured is not measured twice.
        """
        step = int(step if step is not None else (self._step or self._optimizer_step()))
        if self.steps and self.steps[-1] == step:
            return
        tensors, cands, names = [], [], []
        for name, p in self._params:
            state = self.optimizer.state.get(p)
            if p.dim() < 2 or name in self.skipped or not state:
                continue  # vectors stay uncompressed; no state yet (no gradient) is recorded as null
            v = state.get("exp_avg_sq")
            if v is None:
                raise ValueError(f"{type(self.optimizer).__name__} keeps no 'exp_avg_sq' for {name!r} (state: "
                                 f"{', '.join(sorted(state))}); SNR tracking needs an Adam-family optimizer "
                                 "(Adam, AdamW, SlimAdam with K=())")
            if is_sharded(v):
                # FSDP2: gather the whole V (every rank runs this hook, so the collective matches), so the SNR
                # of a sharded V is the unsharded one; costs one V-sized buffer at measuring steps only.
                v = v.full_tensor()
            if tuple(v.shape) != tuple(p.shape):
                self.skipped[name] = (f"second moment already compressed to shape {list(v.shape)}; "
                                      "measure with K = () (plain Adam)")
                continue
            for entry, view in self._views(name, v):
                tensors.append(view)
                cands.append(candidates(view.shape))
                names.append(entry)
        results = snr_many(tensors, cands, dtype=self.dtype)
        got = dict(zip(names, results))
        self.steps.append(step)
        lr = self.optimizer.param_groups[0].get("lr") if self.optimizer.param_groups else None
        self.lrs.append(float(lr) if isinstance(lr, (int, float, Tensor)) else None)
        n = len(self.steps)
        for name, p in self._params:
            if p.dim() < 2 or name in self.skipped:
                continue
            for entry, shape, _, _ in self._entries(name, p):
                row = self._snr.setdefault(entry, {dims_key(k): [] for k in candidates(shape)})
                values = got.get(entry, {})
                for key, series in row.items():
                    series.extend([None] * (n - 1 - len(series)))
                    series.append(values.get(key))

    def _entries(self, name: str, p: Tensor) -> list[tuple[str, tuple[int, ...], str, Callable[[Tensor], Tensor]]]:
        """What is measured for one parameter: (entry name, shape in (fan_out, fan_in...) order, layer type,
        view of V). A weight stored (in, out) is read transposed and each block of a fused weight on its own
        (``name[role]``), so SNR keys mean fan_out / fan_in whatever the storage."""
        lay = self._layouts.get(name)
        if lay is None or p.dim() < 2:
            return [(name, tuple(p.shape), layer_type(name, p.shape), lambda v: v)]
        if lay.blocks:
            return [(f"{name}[{b.role}]", _canonical_shape(b.shape, b.fan_out, b.fan_in), b.role,
                     lambda v, b=b: _canonical(b.take(v), b.fan_out, b.fan_in)) for b in lay.blocks]
        if lay.fan_out == (0,) and lay.fan_in == tuple(range(1, p.dim())):
            return [(name, tuple(p.shape), layer_type(name, p.shape), lambda v: v)]
        return [(name, _canonical_shape(tuple(p.shape), lay.fan_out, lay.fan_in), layer_type(name, p.shape),
                 lambda v: _canonical(v, lay.fan_out, lay.fan_in))]

    def _views(self, name: str, v: Tensor) -> list[tuple[str, Tensor]]:
        return [(entry, view(v)) for entry, _, _, view in self._entries(name, self._by_name[name])]

    # -- results -----------------------------------------------------------------------------------
    def overhead(self) -> dict:
        """Cost of measuring relative to the training step.

        ``fraction`` = (hook time per step) / (step time without the hook), where the step time is the
        wall time between consecutive hook calls (forward, backward, optimizer step, data).
        """
        per_call = self._measure_s / self._calls if self._calls else 0.0
        per_step = self._train_s / self._timed if self._timed else float("nan")
        return {"measure_seconds": self._measure_s, "step_seconds": self._train_s, "steps": self._calls,
                "measurements": len(self.steps), "hook_seconds_per_step": per_call,
                "step_seconds_per_step": per_step,
                "fraction": per_call / per_step if self._timed and per_step > 0 else None}

    def record(self, *, run: dict | None = None, model: dict | None = None) -> SNRRecord:
        """The measurements so far as an :class:`SNRRecord` (with provenance).

        Args:
            run: what the run was (task, preset, data set, seed, lr schedule...), stored as given.
            model: extra model description merged over the class name and parameter count.
        """
        tracked = set(self._snr)
        params = []
        for n, p in self._params:
            entries = self._entries(n, p) if n not in self.skipped else [(n, tuple(p.shape), layer_type(n, p.shape), None)]
            for entry, shape, kind, _ in entries:
                stored = tuple(p.shape) if shape != tuple(p.shape) or entry != n else None
                params.append(ParamInfo(entry, shape, kind, entry in tracked, stored))
        opt = self.optimizer
        group = opt.param_groups[0] if opt.param_groups else {}
        opt_info: dict[str, Any] = {"class": type(opt).__name__}
        for key in ("betas", "eps", "weight_decay", "amsgrad"):
            if key in group:
                val = group[key]
                opt_info[key] = list(val) if isinstance(val, tuple) else (
                    float(val) if isinstance(val, Tensor) else val)
        opt_info["lr_at_steps"] = list(self.lrs)  # the lr when each measurement was taken (schedules move it)
        opt_info["groups"] = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()
                               if k in ("weight_decay", "betas") and not isinstance(v, Tensor)}
                              for g in opt.param_groups]
        model_info = {"class": type(self.model).__name__,
                      "num_params": sum(p.numel() for _, p in self._params), **(model or {})}
        device = next((p.device for _, p in self._params), torch.device("cpu"))
        snr = {n: {k: list(v) for k, v in per_k.items()} for n, per_k in self._snr.items()}
        n = len(self.steps)
        for per_k in snr.values():
            for v in per_k.values():
                v.extend([None] * (n - len(v)))
        return SNRRecord(params, list(self.steps), snr, dict(self.skipped), opt_info, dict(self._schedule_info),
                         model_info, dict(run or {}), self.overhead(), provenance(device))


def track_snr(model: nn.Module, optimizer: torch.optim.Optimizer, schedule: ScheduleLike = None, *,
              dtype: torch.dtype = torch.float64) -> SNRTracker:
    """Attach an :class:`SNRTracker` to ``optimizer`` and return it (also a context manager)."""
    return SNRTracker(model, optimizer, schedule, dtype=dtype).attach()
