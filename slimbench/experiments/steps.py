"""The steps of an experiment: each is one library call behind an existing command, and prints as that command.

    SNRStep    -> snr/<key>.json     `python -m slimbench snr`   (slimbench.snr.run_snr)
    RulesStep  -> rules/<key>.json   `python -m slimbench rules` (slimbench.snr.derive_rules)
    FixedRules -> rules/<key>.json   a hand-written rules file (e.g. "compress the head along the token dim")
    SweepStep  -> runs/<key>/*.json  `python -m slimbench run`   (slimbench.bench.run_sweep)

A step's command and its call are built from the same fields, and a sweep's command comes from
:func:`slimbench.bench.sweep.sweep_command` (the code that writes ``run --print-commands``), so running the
printed plan names the same files: a sweep's runs resume instead of running again.
"""
from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import torch

from slimbench.bench.results import result_path
from slimbench.bench.sweep import SweepConfig, run_sweep, sweep_command
from slimbench.experiments.engine import Context
from slimbench.rules import save_rules
from slimbench.snr.derive import derive_rules
from slimbench.snr.run import run_snr
from slimbench.snr.tracker import Schedule
from slimbench.tasks import build_task, get_spec

PYTHON = "python"  # printed plans name the interpreter portably; summary.json is committed


def _cli(*args: str) -> str:
    return shlex.join([PYTHON, "-m", "slimbench", *args])


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def run_overrides(task: str, preset: str, steps: int, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``overrides`` plus ``steps`` and the warmup the task spec gives that length (its preset's fraction).

    The warmup is spelled out because committed run ids hash it (they predate the spec doing the scaling).
    """
    spec = get_spec(task, preset, **{**overrides, "steps": int(steps)})
    return {**overrides, "steps": spec.steps, "warmup_steps": spec.warmup_steps}


@dataclass(frozen=True)
class SNRStep:
    """Train ``task`` with AdamW at ``lr`` for ``steps`` steps and record SNR (as `slimbench snr`)."""

    key: str
    task: str
    lr: float
    steps: int
    preset: str = "tiny"
    seed: int = 0
    overrides: Mapping[str, Any] = field(default_factory=dict)
    every: int = 50  # measure every this many steps (plus step 1 and the last)

    def output(self, out: Path) -> Path:
        return out / "snr" / f"{self.key}.json"

    @property
    def schedule(self) -> str:
        """EVERY/UNTIL/THEN keeps step 1 (``every:N`` would drop it)."""
        return f"{self.every}/0/{self.every}"

    def command(self, out: Path, threads: int | None = None) -> str:
        sets = [a for k, v in self.overrides.items() for a in ("--set", f"{k}={_json(v)}")]
        return _cli("snr", "--task", self.task, "--preset", self.preset, "--seed", str(self.seed),
                    "--lr", repr(float(self.lr)), "--steps", str(self.steps), "--schedule", self.schedule, *sets,
                    "--out", str(self.output(out)))

    def execute(self, out: Path, ctx: Context) -> None:
        task = build_task(self.task, self.preset, self.seed, **{**self.overrides, "steps": self.steps})
        run_snr(task, lr=self.lr, schedule=Schedule.parse(self.schedule)).save(self.output(out))

    def done(self, out: Path) -> bool:
        return self.output(out).exists()


@dataclass(frozen=True)
class RulesStep:
    """Derive rules from SNR record ``snr`` (a key of an SNRStep) (as `slimbench rules`)."""

    key: str
    snr: str
    cutoff: float = 1.0
    depth_average: bool = False
    skip_steps: int = 0

    def output(self, out: Path) -> Path:
        return out / "rules" / f"{self.key}.json"

    def command(self, out: Path, threads: int | None = None) -> str:
        return _cli("rules", str(out / "snr" / f"{self.snr}.json"), "--cutoff", f"{self.cutoff:g}",
                    *(["--depth-average"] if self.depth_average else []),
                    *(["--skip-steps", str(self.skip_steps)] if self.skip_steps else []),
                    "--out", str(self.output(out)))

    def execute(self, out: Path, ctx: Context) -> None:
        derive_rules(ctx.snr(self.snr), self.cutoff, depth_average=self.depth_average,
                     skip_steps=self.skip_steps).save(self.output(out))

    def done(self, out: Path) -> bool:
        return self.output(out).exists()


@dataclass(frozen=True)
class FixedRules:
    """A hand-written rules file: ``rules`` = ((parameter name, dims alias), ...), by name."""

    key: str
    rules: tuple[tuple[str, str], ...]
    note: str = ""

    def output(self, out: Path) -> Path:
        return out / "rules" / f"{self.key}.json"

    def command(self, out: Path, threads: int | None = None) -> str:
        return f"(rules file written by the recipe: {dict(self.rules)})"

    def execute(self, out: Path, ctx: Context) -> None:
        save_rules(self.output(out), [{"match": n, "dims": d} for n, d in self.rules], by="name",
                   provenance={"written_by": "slimbench.experiments", "note": self.note})

    def done(self, out: Path) -> bool:
        return self.output(out).exists()


@dataclass(frozen=True)
class SweepStep:
    """An lr sweep (as `slimbench run`); ``rules`` is None, "paper" or the key of a rules step."""

    key: str
    task: str
    optimizers: tuple[str, ...]
    lrs: tuple[float, ...]
    seeds: tuple[int, ...]
    steps: int
    preset: str = "tiny"
    rules: str | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def output(self, out: Path) -> Path:
        return out / "runs" / self.key

    def rules_path(self, out: Path) -> str | None:
        if self.rules is None or self.rules == "paper":
            return self.rules
        return str(out / "rules" / f"{self.rules}.json")

    def sweep(self, out: Path) -> SweepConfig:
        return SweepConfig(task=self.task, optimizers=self.optimizers, lrs=self.lrs, seeds=self.seeds,
                           preset=self.preset, rules=self.rules_path(out),
                           overrides=run_overrides(self.task, self.preset, self.steps, self.overrides))

    def command(self, out: Path, threads: int | None = None) -> str:
        return sweep_command(self.sweep(out), self.output(out), threads=threads or torch.get_num_threads(),
                             python=PYTHON)

    def execute(self, out: Path, ctx: Context) -> None:
        outcomes = run_sweep(self.sweep(out).runs(), self.output(out), on_event=ctx.on_event)
        ctx.errors.extend(f"{o.config.run_id}: {o.message.splitlines()[0] if o.message else o.status}"
                          for o in outcomes if o.status in ("error", "unavailable"))

    def done(self, out: Path) -> bool:
        return all(result_path(self.output(out), c).exists() for c in self.sweep(out).runs())


Step = Union[SNRStep, RulesStep, FixedRules, SweepStep]
