"""The recipe engine: an experiment is a plan (steps) and an analysis; :func:`run` does the missing steps.

A step whose output exists is skipped (sweeps resume run by run), so rerunning an experiment only computes
what is missing, and ``analyze_only=True`` builds tables from whatever exists. Steps are duck-typed
(:class:`StepLike`; the built-in ones are in :mod:`slimbench.experiments.steps`), so the engine imports no
step and no experiment. Nothing here prints.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from slimbench.report.load import Collection, load
from slimbench.report.table import Table
from slimbench.snr.record import SNRRecord, load_snr

EventCallback = Callable[[str, Any, Any], None]  # sweep progress (slimbench.bench.sweep.EventCallback)


class StepLike(Protocol):
    """What the engine asks of a step: its name, its command (for the plan), whether it is done, do it."""

    key: str

    def command(self, out: Path, threads: int | None = None) -> str: ...

    def done(self, out: Path) -> bool: ...

    def execute(self, out: Path, ctx: Context) -> None: ...


Draw = Callable[[Path], list[tuple[str, str]]]  # draws PNGs into a folder; returns (title, path) of each


@dataclass
class Analysis:
    """Tables (slimbench.report Tables, rendered as report.md renders them), plots drawn by slimbench.report
    into the experiment's folder, and the machine-readable findings."""

    tables: list[Table]
    plots: list[Draw] = field(default_factory=list)
    findings: dict[str, Any] = field(default_factory=dict)  # machine-readable key results
    missing: list[str] = field(default_factory=list)  # outputs the analysis wanted but did not find


@dataclass
class Context:
    """What steps and analyses share: the experiment folder, loaders, a progress callback, errors."""

    out: Path
    on_event: EventCallback | None = None
    errors: list[str] = field(default_factory=list)

    def snr(self, key: str) -> SNRRecord:
        return load_snr(self.out / "snr" / f"{key}.json")

    def has(self, kind: str, key: str) -> bool:
        return (self.out / kind / (key if kind == "runs" else f"{key}.json")).exists()

    def runs(self, *keys: str) -> Collection:
        """The run results of sweeps ``keys``, read as the report reads them (none for a sweep not run)."""
        folders = [self.out / "runs" / k for k in keys if (self.out / "runs" / k).exists()]
        return load(folders) if folders else Collection()

    def rules(self, key: str) -> dict:
        return json.loads((self.out / "rules" / f"{key}.json").read_text())


@dataclass(frozen=True)
class Experiment:
    name: str
    title: str
    claim: str  # what the paper reports
    plan: Callable[[bool], Sequence[StepLike]]  # quick -> steps
    analyze: Callable[[Context, bool], Analysis]


@dataclass
class StepRecord:
    key: str
    kind: str
    command: str
    status: str  # "ran" | "ran with errors" | "skipped (output exists)" | "not run"
    wall_time_s: float
    message: str = ""

    def to_dict(self) -> dict:
        return {"key": self.key, "kind": self.kind, "command": self.command, "status": self.status,
                "wall_time_s": self.wall_time_s, "message": self.message}


@dataclass
class ExperimentResult:
    experiment: Experiment
    quick: bool
    out: Path
    steps: list[StepRecord]
    analysis: Analysis
    errors: list[str]
    wall_time_s: float
    files: list[Path] = field(default_factory=list)
    threads: int | None = 1  # torch threads the steps ran with


def plan_commands(exp: Experiment, quick: bool, out: Path, threads: int | None) -> list[str]:
    """The experiment as commands, one per step: what ``experiment NAME --plan`` prints."""
    return [step.command(out, threads) for step in exp.plan(quick)]


def run(exp: Experiment, out: Path, *, quick: bool = False, analyze_only: bool = False, threads: int | None = 1,
        on_step: Callable[[Any, str], None] | None = None,
        on_event: EventCallback | None = None) -> ExperimentResult:
    """Run ``exp``'s missing steps in order into ``out``, then analyse its files (see the package docstring)."""
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(out, on_event)
    t0 = time.perf_counter()
    records: list[StepRecord] = []
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        for step in exp.plan(quick):
            kind = type(step).__name__
            command = step.command(out, threads)
            done = step.done(out)
            if analyze_only or done:
                records.append(StepRecord(step.key, kind, command, "skipped (output exists)" if done else "not run",
                                          0.0))
                continue
            if on_step:
                on_step(step, "start")
            s0 = time.perf_counter()
            before = len(ctx.errors)
            step.execute(out, ctx)
            status = "ran" if len(ctx.errors) == before else "ran with errors"
            records.append(StepRecord(step.key, kind, command, status, time.perf_counter() - s0,
                                      "; ".join(ctx.errors[before:])))
            if on_step:
                on_step(step, "end")
    finally:
        torch.set_num_threads(old_threads)
    analysis = exp.analyze(ctx, quick)
    return ExperimentResult(exp, quick, out, records, analysis, ctx.errors, time.perf_counter() - t0, threads=threads)
