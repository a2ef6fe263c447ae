"""Run configs and run results: the schema of one run's JSON file, its name, and atomic reads and writes.

One run = task x preset x optimizer x lr x seed (+ rules, + task overrides). Its result is one file,
``<out>/<run_id>.json`` (format ``slimbench.run``, version 1), written atomically once the run ends; a
file therefore exists only for a run that finished or diverged, which is what makes sweeps resumable.

File, version 1::

    {"format": "slimbench.run", "version": 1, "run_id": "...",
     "config":  RunConfig.to_dict(),                 # what was asked for
     "status":  "finished" | "diverged",
     "summary": {initial_loss, final_train_loss, final_val_loss, best_val_loss, steps_done,
                 diverged_step, median_step_time_s, state_bytes, ...},   # derived from the fields below
     "train_loss": [float | null, ...],              # every step (null = not finite)
     "val": [{"step": s, "loss": x}, ...],           # after s optimizer steps (0 = before training)
     "grad_norm": [...], "lr": [...], "step_time_s": [...],   # every step
     "divergence": null | {"step", "loss", "reason"},
     "memory": ledger(optimizer).to_dict(),          # after the first step (state allocated)
     "optimizer": {"name", "class", "lr", "betas", "weight_decay", "rules", "rules_fingerprint"},
     "task": task.describe(),                        # data hashes, model config, n_params
     "env": provenance() + seed, dtype, threads,
     "wall_time_s": ..., "started_at": "...Z"}
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from slimbench.io import FormatError, read_versioned, write_json_atomic

RUN_FORMAT = "slimbench.run"
RUN_VERSION = 1
DEFAULT_DIVERGENCE_FACTOR = 3.0


def _plain(value: Any) -> Any:
    """Tuples to lists, recursively: the JSON form, so a config compares equal after a round trip."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class RunConfig:
    """One run of a sweep. ``overrides`` are task settings (``steps``, ``n_layer``, ...; see build_task)."""

    task: str
    optimizer: str
    lr: float
    seed: int = 0
    preset: str = "tiny"
    rules: str | None = None  # None, "paper", or a rules file (see slimbench.rules)
    overrides: Mapping[str, Any] = field(default_factory=dict)
    divergence_factor: float = DEFAULT_DIVERGENCE_FACTOR  # train loss > factor x the first loss ends the run
    fsdp: int = 0  # world size of a run under FSDP2 (torchrun ... run --fsdp); 0: one process, not sharded

    def __post_init__(self):
        for name in ("task", "optimizer", "preset"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a name (a string), got {getattr(self, name)!r}")
        if self.rules is not None and not isinstance(self.rules, str):
            raise ValueError(f"rules must be None, 'paper' or a rules file path, got {self.rules!r}")
        if not isinstance(self.overrides, Mapping) or not all(isinstance(k, str) for k in self.overrides):
            raise ValueError(f"overrides must be a mapping of setting names to values, got {self.overrides!r}")
        if not _is_number(self.divergence_factor):
            raise ValueError(f"divergence_factor must be a number, got {self.divergence_factor!r}")
        if not isinstance(self.lr, (int, float)) or isinstance(self.lr, bool) or not math.isfinite(self.lr) \
                or self.lr < 0:
            raise ValueError(f"lr must be a finite number >= 0, got {self.lr!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")
        if not self.optimizer or not self.task:
            raise ValueError("task and optimizer must be non-empty names")
        if not _is_int(self.fsdp) or self.fsdp < 0:
            raise ValueError(f"fsdp must be a world size (an int >= 1) or 0 (not sharded), got {self.fsdp!r}")
        if not self.divergence_factor > 1:
            raise ValueError(f"divergence_factor must be > 1, got {self.divergence_factor!r}")
        object.__setattr__(self, "lr", float(self.lr))
        object.__setattr__(self, "overrides", _plain(self.overrides))

    def rules_fingerprint(self) -> str:
        from slimbench.rules import fingerprint

        return fingerprint(self.rules)

    @cached_property  # frozen: computed once (a rules file is read for its fingerprint)
    def run_id(self) -> str:
        """File stem, deterministic from the config: names what varies in a sweep, hashes the rest."""
        rest = json.dumps({"overrides": self.overrides, "divergence_factor": self.divergence_factor},
                          sort_keys=True)
        parts = [self.task, self.preset, self.optimizer, f"lr{self.lr!r}", f"seed{self.seed}",
                 f"rules-{self.rules_fingerprint()}", hashlib.sha256(rest.encode()).hexdigest()[:8]]
        if self.fsdp:  # a sharded run is its own file (unsharded ids are unchanged)
            parts.append(f"fsdp{self.fsdp}")
        return re.sub(r"[^A-Za-z0-9._+=-]", "-", "_".join(parts))

    def to_dict(self) -> dict:
        """Every field; ``fsdp`` only when set, so unsharded result files read as they always did."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "fsdp" or self.fsdp}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _list_of(ok) -> Any:
    return lambda v: isinstance(v, list) and all(ok(x) for x in v)


_NUMBER_OR_NONE = lambda x: x is None or _is_number(x)  # noqa: E731
_VAL_POINT = lambda v: isinstance(v, dict) and _is_int(v.get("step")) and _NUMBER_OR_NONE(v.get("loss"))  # noqa: E731
_DIVERGENCE = lambda v: v is None or (isinstance(v, dict) and _is_int(v.get("step"))  # noqa: E731
                                      and isinstance(v.get("reason", ""), str))
_BYTES = ("state_bytes", "param_bytes")
_MEMORY = lambda v: isinstance(v, dict) and all(v.get(k) is None or _is_int(v[k]) for k in _BYTES)  # noqa: E731
# field -> (check, what it must be): the one place the types of a run file are checked.
RUN_FIELDS: dict[str, tuple[Any, str]] = {
    "config": (lambda v: isinstance(v, dict), "an object"),
    "status": (lambda v: v in ("finished", "diverged"), "'finished' or 'diverged'"),
    "train_loss": (_list_of(_NUMBER_OR_NONE), "a list of numbers or nulls"),
    "val": (_list_of(_VAL_POINT), "a list of {'step': int, 'loss': number or null}"),
    "grad_norm": (_list_of(_NUMBER_OR_NONE), "a list of numbers or nulls"),
    "lr": (_list_of(_is_number), "a list of numbers"),
    "step_time_s": (_list_of(_is_number), "a list of numbers"),
    "divergence": (_DIVERGENCE, "null or {'step': int, 'reason': str, ...}"),
    "memory": (_MEMORY, "an object whose state_bytes / param_bytes are ints"),
    "optimizer": (lambda v: isinstance(v, dict), "an object"),
    "task": (lambda v: isinstance(v, dict), "an object"),
    "env": (lambda v: isinstance(v, dict), "an object"),
    "wall_time_s": (_is_number, "a number"),
    "started_at": (lambda v: isinstance(v, str), "a string"),
}


def check_run_fields(d: Mapping[str, Any]) -> None:
    """ValueError naming the first field of a run record that is missing or of the wrong type."""
    for name, (ok, what) in RUN_FIELDS.items():
        if name not in d and name != "divergence":
            raise ValueError(f"field {name!r} is missing")
        value = d.get(name)
        if not ok(value):
            shown = repr(value)
            raise ValueError(f"field {name!r} must be {what}, got {shown if len(shown) <= 60 else shown[:57] + '...'}")


def _finite_or_none(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


@dataclass
class RunResult:
    """What one run measured. ``summary`` is derived from the curves; see the module docstring."""

    config: RunConfig
    status: str  # "finished" | "diverged"
    train_loss: list[float | None]
    val: list[dict]  # {"step": int, "loss": float | None}
    grad_norm: list[float | None]
    lr: list[float]
    step_time_s: list[float]
    memory: dict
    optimizer: dict
    task: dict
    env: dict
    wall_time_s: float
    started_at: str
    divergence: dict | None = None  # {"step", "loss" (repr), "reason"}

    @property
    def summary(self) -> dict:
        finite = [x for x in self.train_loss if x is not None]
        tail = finite[-10:]
        vals = [v["loss"] for v in self.val if v["loss"] is not None]
        times = sorted(self.step_time_s)
        return {
            "status": self.status,
            "steps_done": len(self.step_time_s),
            "diverged_step": self.divergence["step"] if self.divergence else None,
            "initial_loss": self.train_loss[0] if self.train_loss else None,
            "final_train_loss": sum(tail) / len(tail) if tail and self.status == "finished" else None,  # mean of last 10
            "initial_val_loss": self.val[0]["loss"] if self.val else None,
            "final_val_loss": self.val[-1]["loss"] if self.val and self.status == "finished" else None,
            "best_val_loss": min(vals) if vals else None,
            "median_step_time_s": times[len(times) // 2] if times else None,
            "state_bytes": self.memory.get("state_bytes"),
            "param_bytes": self.memory.get("param_bytes"),
            "wall_time_s": self.wall_time_s,
        }

    def to_dict(self) -> dict:
        return {
            "format": RUN_FORMAT, "version": RUN_VERSION, "run_id": self.config.run_id,
            "config": self.config.to_dict(), "status": self.status, "summary": self.summary,
            "train_loss": [_finite_or_none(x) for x in self.train_loss],
            "val": [{"step": v["step"], "loss": _finite_or_none(v["loss"])} for v in self.val],
            "grad_norm": [_finite_or_none(x) for x in self.grad_norm], "lr": self.lr,
            "step_time_s": self.step_time_s, "divergence": self.divergence, "memory": self.memory,
            "optimizer": self.optimizer, "task": self.task, "env": self.env,
            "wall_time_s": self.wall_time_s, "started_at": self.started_at,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunResult:
        """A result from its JSON form; ValueError naming the first missing or mistyped field."""
        check_run_fields(d)
        names = [f.name for f in dataclasses.fields(cls)]
        kw = {k: d[k] for k in names if k in d and k != "config"}
        return cls(config=RunConfig.from_dict(d["config"]), **kw)


def result_path(out: str | Path, config: RunConfig) -> Path:
    return Path(out) / f"{config.run_id}.json"


def save_result(result: RunResult, out: str | Path) -> Path:
    """Write ``result`` to ``<out>/<run_id>.json`` atomically (a reader sees the old file or the new one)."""
    return write_json_atomic(result_path(out, result.config), result.to_dict())


def load_result(path: str | Path) -> RunResult:
    d = read_versioned(path, RUN_FORMAT, RUN_VERSION)
    try:
        return RunResult.from_dict(d)
    except (KeyError, TypeError, ValueError) as e:
        raise FormatError(f"{path}: a {RUN_FORMAT!r} file with a missing or bad field: {e}") from None


def load_results(out: str | Path) -> list[RunResult]:
    """Every run result in folder ``out`` (files starting with '.' are temporaries and are ignored)."""
    return [load_result(p) for p in sorted(Path(out).glob("*.json")) if not p.name.startswith(".")]
