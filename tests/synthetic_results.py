"""Synthetic result files for report / compare tests, written with the results module's own writer."""
from __future__ import annotations

import json
from pathlib import Path

from slimbench.bench.results import RunConfig, RunResult, save_result
from slimbench.io import write_json_atomic

ENV = {"versions": {"slimbench": "0.1.0", "torch": "2.13.0"}, "python": "3.11.7", "platform": "Linux-test",
       "device": "cpu", "device_name": "x86_64", "threads": 1, "cpu_count": 2, "commit": "abc123", "seed": 0,
       "dtype": "float32"}


def make_run(optimizer: str = "adamw", lr: float = 1e-3, seed: int = 0, *, task: str = "gpt", steps: int = 10,
             final: float = 2.0, diverged_at: int | None = None, state_bytes: int = 2000, param_bytes: int = 1000,
             saved: float = 0.0, step_time: float = 0.01, rules: str | None = None) -> RunResult:
    """A run whose training loss falls linearly from 4.0 to ``final`` (or diverges at ``diverged_at``)."""
    cfg = RunConfig(task=task, optimizer=optimizer, lr=lr, seed=seed, rules=rules, overrides={"steps": steps})
    n = steps if diverged_at is None else diverged_at + 1
    train = [4.0 + (final - 4.0) * i / max(steps - 1, 1) for i in range(n)]
    val = [{"step": 0, "loss": 4.0}]
    divergence = None
    if diverged_at is not None:
        train[-1] = float("nan")
        divergence = {"step": diverged_at, "loss": "nan", "reason": "loss is not finite"}
    else:
        val.append({"step": steps, "loss": final})
    done = len(train) - (diverged_at is not None)
    return RunResult(config=cfg, status="diverged" if diverged_at is not None else "finished", train_loss=train,
                     val=val, grad_norm=[1.0] * done, lr=[lr] * done, step_time_s=[step_time] * done,
                     memory={"state_bytes": state_bytes, "param_bytes": param_bytes, "param_numel": param_bytes // 4,
                             "second_moment_saved_fraction": saved},
                     optimizer={"name": optimizer, "rules": rules, "rules_fingerprint": cfg.rules_fingerprint()},
                     task={"name": task}, env=dict(ENV), wall_time_s=1.0, started_at="2025-01-01T00:00:00Z",
                     divergence=divergence)


def write_runs(folder: str | Path, runs: list[RunResult]) -> Path:
    for r in runs:
        save_result(r, folder)
    return Path(folder)


def bench_entry(name: str, optimizer: str, *, kind: str = "step_time", state_bytes: int = 2000, ratio: float = 1.0,
                min_s: float = 0.01, **extra) -> dict:
    """One pytest-benchmark entry as the suites write it (stats trimmed to what readers use)."""
    info = {"kind": kind, "extra_version": 1, "optimizer": optimizer, "state_bytes": state_bytes}
    if kind == "step_time":
        info.update({"shape": "gpt-3m", "device": "cpu", "dtype": "float32", "foreach": True, "threads": 1,
                     "n_params": 1000, "param_bytes": 4000, "second_moment_saved_fraction": 0.0,
                     "peak_step_bytes": 4000 * 3 + state_bytes, "transient_bytes": 100,
                     "within_transient_budget": True, "ratio_to_adamw_foreach": ratio,
                     "ratio_to_adamw_foreach_median": ratio, "memory_method": "cpu: tracker"})
    info.update(extra)
    return {"group": "step gpt-3m", "name": f"test_step_time[{name}]",
            "fullname": f"suites/test_bench_step.py::test_step_time[{name}]", "params": {"name": optimizer},
            "param": name, "extra_info": info, "options": {},
            "stats": {"min": min_s, "max": 2 * min_s, "mean": 1.5 * min_s, "median": 1.2 * min_s, "rounds": 10,
                      "iterations": 1, "stddev": 0.0}}


def write_bench(path: str | Path, entries: list[dict]) -> Path:
    doc = {"machine_info": {"python_version": "3.11.7", "machine": "x86_64", "cpu": {"brand_raw": "Test CPU",
                                                                                    "count": 2}},
           "commit_info": {"id": "abc123", "dirty": False}, "benchmarks": entries,
           "datetime": "2025-01-01T00:00:00", "version": "5.2.3"}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(doc))
    return Path(path)


def write_json(path: str | Path, obj: dict) -> Path:
    return write_json_atomic(path, obj)
