"""The SNR record: what one tracked Adam run measured, as a versioned JSON file (``slimbench.snr`` v1).

File layout::

    {"format": "slimbench.snr", "version": 1,
     "params": [{"name": "blocks.0.attn.q.weight", "shape": [64, 64], "layer_type": "query",
                 "tracked": true}, ...],           # every model parameter, tracked or not (1-D: not)
     "steps": [1, 100, 200, ...],                  # optimizer steps at which V was read
     "snr": {"blocks.0.attn.q.weight": {"0": [..], "1": [..], "0,1": [..]}, ...},
                                                   # one value per step; null = no state yet
     "skipped": {"name": "why it was not tracked"},
     "optimizer": {"class": "AdamW", "lr_at_steps": [..], "betas": .., ...}, "schedule": {...},
     "model": {"class": "GPT", "num_params": ...}, "run": {task, preset, seed, data set, ...},
     "overhead": {"measure_seconds": .., "step_seconds": .., "fraction": ..},
     "provenance": {...}}

SNR values are finite floats, ``Infinity`` (V constant along K) or ``NaN`` (V had NaN), as Python's
json module writes and reads them.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from slimbench.io import FormatError, read_versioned, write_json_atomic
from slimbench.layers import layer_type

SNR_FORMAT = "slimbench.snr"
SNR_VERSION = 1


@dataclass(frozen=True)
class ParamInfo:
    """One model parameter as the SNR run saw it."""

    name: str  # a parameter, or "<parameter>[<role>]" for one block of a fused weight
    shape: tuple[int, ...]  # in (fan_out, fan_in...) order, whatever the storage: SNR keys are dims of this
    layer_type: str
    tracked: bool
    stored_shape: tuple[int, ...] | None = None  # the parameter's own shape, where it differs (Conv1D, blocks)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def parameter(self) -> str:
        """The model parameter this entry measures (a block's entry names its fused weight)."""
        return self.name.rsplit("[", 1)[0] if self.name.endswith("]") else self.name

    def to_dict(self) -> dict:
        d = {"name": self.name, "shape": list(self.shape), "layer_type": self.layer_type, "tracked": self.tracked}
        if self.stored_shape is not None:
            d["stored_shape"] = list(self.stored_shape)
        return d


@dataclass
class SNRRecord:
    """SNR per parameter, per candidate K, per measured step, plus everything needed to trust it."""

    params: list[ParamInfo]
    steps: list[int]
    snr: dict[str, dict[str, list[float | None]]]
    skipped: dict[str, str] = field(default_factory=dict)
    optimizer: dict = field(default_factory=dict)
    schedule: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)
    run: dict = field(default_factory=dict)
    overhead: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    source: str | None = None  # the file it was read from, for error messages

    @property
    def tracked(self) -> list[ParamInfo]:
        return [p for p in self.params if p.tracked]

    def param(self, name: str) -> ParamInfo:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def to_dict(self) -> dict:
        return {"format": SNR_FORMAT, "version": SNR_VERSION,
                "params": [p.to_dict() for p in self.params], "steps": list(self.steps),
                "snr": self.snr, "skipped": dict(self.skipped), "optimizer": self.optimizer,
                "schedule": self.schedule, "model": self.model, "run": self.run,
                "overhead": self.overhead, "provenance": self.provenance}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the record atomically."""
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def from_dict(cls, obj: dict, source: str = "<dict>") -> SNRRecord:
        """Build a record from its JSON form, checking every field a reader relies on (one-line errors)."""
        def bad(msg: str) -> FormatError:
            return FormatError(f"{source}: {msg}")

        raw_params = obj.get("params")
        if not isinstance(raw_params, list):
            raise bad("'params' must be a list of {name, shape, ...}")
        params = []
        for i, p in enumerate(raw_params):
            if not isinstance(p, dict) or not isinstance(p.get("name"), str) or not isinstance(p.get("shape"), list):
                raise bad(f"param #{i} needs 'name' and 'shape', got {p!r}")
            shape = tuple(int(s) for s in p["shape"])
            stored = p.get("stored_shape")
            if stored is not None and not (isinstance(stored, list) and all(isinstance(x, int) for x in stored)):
                raise bad(f"param #{i}: 'stored_shape' must be a list of ints, got {stored!r}")
            params.append(ParamInfo(p["name"], shape, p.get("layer_type") or layer_type(p["name"], shape),
                                    bool(p.get("tracked", len(shape) >= 2)),
                                    tuple(stored) if stored is not None else None))
        steps = obj.get("steps")
        if not isinstance(steps, list) or not all(isinstance(s, int) for s in steps):
            raise bad("'steps' must be a list of integers")
        table = obj.get("snr")
        if not isinstance(table, dict):
            raise bad("'snr' must map parameter names to {K: [values per step]}")
        names = {p.name for p in params}
        for name, per_k in table.items():
            if name not in names:
                raise bad(f"SNR for {name!r}, which is not among the recorded parameters")
            if not isinstance(per_k, dict):
                raise bad(f"SNR of {name!r} must map K to a list of values")
            for key, values in per_k.items():
                if not isinstance(values, list) or len(values) != len(steps):
                    got = len(values) if isinstance(values, list) else type(values).__name__
                    raise bad(f"SNR of {name!r} along K={key}: {got} values for {len(steps)} steps")
        return cls(params, list(steps), table, dict(obj.get("skipped") or {}), obj.get("optimizer") or {},
                   obj.get("schedule") or {}, obj.get("model") or {}, obj.get("run") or {},
                   obj.get("overhead") or {}, obj.get("provenance") or {}, source)

    def check_model(self, named_shapes: Iterable[tuple[str, Sequence[int]]]) -> None:
        """Raise a one-line FormatError if the record was measured on a different model.

        Different means: a tracked parameter is missing from the model or has another shape.
        """
        shapes = {n: tuple(int(x) for x in s) for n, s in named_shapes}
        where = self.source or "SNR record"
        for p in self.tracked:
            if p.parameter not in shapes:
                raise FormatError(f"{where}: recorded for a different model: it has no parameter {p.parameter!r} "
                                  f"({len(shapes)} parameters, e.g. {', '.join(list(shapes)[:3])})")
            if p.parameter != p.name:
                continue  # a block: its fused weight's shape is checked through its own entry
            want = p.stored_shape or p.shape
            if shapes[p.name] != want:
                raise FormatError(f"{where}: recorded for a different model: {p.name!r} has shape "
                                  f"{list(shapes[p.name])}, the record has {list(want)}")


def load_snr(path: str | os.PathLike) -> SNRRecord:
    """Read an SNR record; truncated, newer-version and wrong-kind files give a one-line FormatError."""
    obj = read_versioned(path, SNR_FORMAT, SNR_VERSION)
    return SNRRecord.from_dict(obj, str(path))
