"""An experiment's files: ``summary.json`` (every table, every finding, per-step commands and wall times),
``tables.md`` (the tables as report.md renders them) and the PNG plots its analysis draws.

The summary is versioned (format ``slimbench.experiment``); a resumed experiment keeps the wall time of the
steps that ran in an earlier invocation, so the recorded compute time is the experiment's, not the last call's.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from slimbench.experiments.engine import ExperimentResult, StepRecord
from slimbench.io import write_atomic, write_json_atomic

EXPERIMENTS_FORMAT = "slimbench.experiment"
EXPERIMENTS_VERSION = 2  # 2: tables are slimbench.report tables (raw cell values), plots are {title, file}


def _merge_wall_times(path: Path, records: list[StepRecord]) -> list[dict]:
    """Keep the wall time of steps that ran in an earlier invocation (a resumed experiment)."""
    old = {}
    if path.exists():
        try:
            old = {s["key"] + s["kind"]: s for s in json.loads(path.read_text()).get("steps", [])}
        except (ValueError, KeyError, TypeError):
            old = {}
    out = []
    for r in records:
        d = r.to_dict()
        prev = old.get(r.key + r.kind)
        if r.status != "ran" and r.wall_time_s == 0 and prev and prev.get("status", "").startswith("ran"):
            d = {**prev, "command": r.command}
        out.append(d)
    return out


def write_outputs(result: ExperimentResult, threads: int | None = None) -> list[Path]:
    """Plots (drawn by slimbench.report), ``summary.json`` (tables, findings, steps with commands and wall
    times) and ``tables.md`` (the tables as report.md renders them)."""
    from slimbench.env import provenance
    from slimbench.report.markdown import table_markdown  # loads matplotlib: see common.report_plots

    out, a, exp = result.out, result.analysis, result.experiment
    threads = result.threads if threads is None else threads
    images = [(title, Path(path)) for draw in a.plots for title, path in draw(out)]
    summary_path = out / "summary.json"
    steps = _merge_wall_times(summary_path, result.steps)
    obj = {"format": EXPERIMENTS_FORMAT, "version": EXPERIMENTS_VERSION, "experiment": exp.name,
           "title": exp.title, "paper_claim": exp.claim, "quick": result.quick,
           "command": f"python -m slimbench experiment {exp.name}" + (" --quick" if result.quick else ""),
           "threads": threads, "steps": steps,
           "compute_wall_time_s": sum(s["wall_time_s"] for s in steps),
           "tables": _jsonable([t.to_dict() for t in a.tables]),
           "plots": [{"title": title, "file": path.name} for title, path in images],
           "findings": _jsonable(a.findings), "missing": a.missing,
           # errors of this invocation, plus those of steps that ran (with errors) in an earlier one
           "errors": result.errors + [m for s in steps if s["status"] == "ran with errors" and s not in
                                      [r.to_dict() for r in result.steps] for m in s["message"].split("; ") if m],
           # the steps ran with `threads` torch threads (restored before this call, so record it here)
           "provenance": {**provenance(), **({"threads": threads} if threads else {})}}
    files = [write_json_atomic(summary_path, obj)]
    md = [f"# {exp.title}", "", f"Paper: {exp.claim}", "",
          (f"Command: `{obj['command']}` (torch threads: {threads}); "
           f"compute wall time {obj['compute_wall_time_s']:.0f} s."), ""]
    if a.missing:
        md += ["Missing outputs (not run or failed): " + ", ".join(a.missing), ""]
    for t in a.tables:
        md += [table_markdown(t, level=2), ""]
    for title, path in images:
        md += [f"![{title}]({path.name})", ""]
    tables_path = out / "tables.md"
    write_atomic(tables_path, "\n".join(md))
    files.append(tables_path)
    return files + [path for _, path in images]


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return x
