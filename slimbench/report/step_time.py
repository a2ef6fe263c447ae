"""Step-time section: the optimizer-step suite, the fused-kernel suite and its targets, and whole training
steps in sweeps. Every "vs AdamW" column is the step ratio of :mod:`slimbench.bench.extra_info` (fastest
over fastest, AdamW of the same kind, same run)."""
from __future__ import annotations

import math
import statistics

from slimbench.bench import extra_info as xi
from slimbench.report.load import Collection
from slimbench.report.memory import _bench_entries
from slimbench.report.runs import (adamw_step_times, group_runs, min_step_time, optimizer_label, run_step_ratio,
                                   task_label)
from slimbench.report.table import Column, finite


def step_time_rows(c: Collection) -> list[dict]:
    """Benchmarks (kind step_time): time of one step and its ratio to AdamW(foreach) in the same test."""
    rows = []
    for path, b in _bench_entries(c, xi.KIND_STEP):
        e, st = b["extra_info"], b["stats"]
        rows.append({"group": b.get("group") or e.get("shape"), "optimizer": e.get("optimizer"),
                     "foreach": e.get("foreach"), "device": e.get("device"), "threads": e.get("threads"),
                     "min_s": st.get("min"), "median_s": st.get("median"), "rounds": st.get("rounds"),
                     "ratio": e.get("ratio_to_adamw_foreach"), "ratio_median": e.get("ratio_to_adamw_foreach_median"),
                     "target_met": e.get("target_met"), "sources": [path]})
    return rows


STEP_COLUMNS = [Column("group", "case"), Column("optimizer", "optimizer"), Column("foreach", "foreach"),
                Column("min_s", "min ms", "ms"), Column("median_s", "median ms", "ms"), Column("rounds", "rounds", "int"),
                Column("ratio", "vs AdamW foreach (min)", "x2"), Column("ratio_median", "(median)", "x2"),
                Column("device", "device"), Column("threads", "threads", "int")]


def _fused_case(e: dict, source: str) -> dict:
    """The fields every fused-suite row starts with: which case, where, and the file it came from."""
    return {"size": e.get("size"), "threads": e.get("threads"), "device": e.get("device"), "dtype": e.get("dtype"),
            "sources": [source]}


def _roofline_cells(e: dict, path: str) -> dict:
    """The roofline columns of one path; the percentage as a fraction, for the ``pct`` format."""
    r = xi.fused_roofline(e, path)
    pct = r.pop("pct_of_copy")
    return {**r, "copy_fraction": None if pct is None else pct / 100}


def fused_rows(c: Collection) -> list[dict]:
    """The fused-kernel suite (kind fused_step): one row per size and path, from its interleaved comparison.

    ``vs AdamW`` divides by the AdamW path of the same kind measured in the same rounds (fused SlimAdam
    by fused AdamW, the others by foreach AdamW), minima over minima as the suite does. Beside it, the
    roofline: the path's byte model per parameter, its GB/s, and that as a percentage of a copy of as many
    bytes timed in the same rounds (how near the step is to the bandwidth this machine gives a stream)."""
    rows = []
    for path, e in xi.fused_sizes((i.path, i.data) for i in c.benchmarks):
        ms_all = e.get("ms_per_step") or {}
        transient = e.get("transient_bytes") if isinstance(e.get("transient_bytes"), dict) else {}
        for p, ms in ms_all.items():
            rows.append({**_fused_case(e, path), "path": p, "n_params": e.get("n_params"),
                         "min_s": ms.get("min", math.nan) / 1e3, "median_s": ms.get("median", math.nan) / 1e3,
                         "vs_adamw": xi.fused_step_ratio(e, p) if p.startswith("slimadam") else None,
                         **_roofline_cells(e, p),
                         "state_bytes": (e.get("state_bytes") or {}).get(p), "transient_bytes": transient.get(p)})
    return rows


FUSED_COLUMNS = [Column("size", "size"), Column("path", "path"), Column("n_params", "params", "int"),
                 Column("device", "device"), Column("dtype", "dtype"), Column("threads", "threads", "int"),
                 Column("min_s", "min ms", "ms"), Column("median_s", "median ms", "ms"),
                 Column("vs_adamw", "vs AdamW (same kind)", "x2"), Column("bytes_per_param", "B/param", "f2"),
                 Column("gbps", "effective GB/s", "f2"), Column("copy_gbps", "copy GB/s (same run)", "f2"),
                 Column("copy_fraction", "of copy", "pct"),
                 Column("state_bytes", "state MiB", "mib"), Column("transient_bytes", "transient MiB", "mib")]


def fused_target_rows(c: Collection) -> list[dict]:
    """The issue's targets per size: each measured ratio against its target, and the one-off build costs."""
    rows = []
    for path, e in xi.fused_sizes((i.path, i.data) for i in c.benchmarks):
        ratios = e.get("ratio") or {}
        transient = e.get("transient_bytes") if isinstance(e.get("transient_bytes"), dict) else {}
        for name, met in (e.get("targets_met") or {}).items():
            r = ratios.get(name, {})
            if name.startswith("transient "):  # "transient a<=b": show both byte counts
                a, b = name.removeprefix("transient ").split("<=")
                r = {"min": f"{transient.get(a, '-')} B vs {transient.get(b, '-')} B"}
            rows.append({**_fused_case(e, path), "target": name, "ratio": r.get("min"),
                         "ratio_median": r.get("median"), "limit": met.get("target"), "met": met.get("met"),
                         "compile_s": e.get("compile_s"), "native_build_s": e.get("native_build_s")})
    return rows


FUSED_TARGET_COLUMNS = [Column("size", "size"), Column("device", "device"), Column("dtype", "dtype"),
                        Column("threads", "threads", "int"),
                        Column("target", "ratio (or transient check)"), Column("ratio", "measured (min)", "x2"),
                        Column("ratio_median", "(median)", "x2"), Column("limit", "target", "x2"),
                        Column("met", "met", "bool"), Column("compile_s", "compile s (cold)", "f2"),
                        Column("native_build_s", "native build s", "f2")]


def sweep_step_rows(c: Collection) -> list[dict]:
    """Sweeps: training-step time per optimizer (median and fastest step, medians over runs), and its
    ratio to the AdamW run of the same task, lr and seed: fastest step over fastest step (the stable
    statistic on shared cores), median over the matched pairs. Whole steps: batch, forward, backward, step."""
    reference = adamw_step_times(c.runs)
    rows = []
    for (task, opt), items in sorted(group_runs(c.runs, lambda r: (task_label(r), optimizer_label(r))).items()):
        medians = [t for t in (i.data.summary.get("median_step_time_s") for i in items) if finite(t)]
        mins = [t for t in (min_step_time(i.data) for i in items) if finite(t)]
        ratios = [x for x in (run_step_ratio(i.data, reference) for i in items) if x is not None]
        rows.append({"task": task, "optimizer": opt, "runs": len(items),
                     "median_s": statistics.median(medians) if medians else None,
                     "min_s": statistics.median(mins) if mins else None,
                     "ratio": statistics.median(ratios) if ratios else None, "pairs": len(ratios),
                     "sources": [i.path for i in items]})
    return rows


SWEEP_STEP_COLUMNS = [Column("task", "task"), Column("optimizer", "optimizer"), Column("runs", "runs", "int"),
                      Column("median_s", "median ms/step", "ms"), Column("min_s", "fastest ms", "ms"),
                      Column("ratio", "vs AdamW same lr+seed (fastest)", "x2"),
                      Column("pairs", "pairs", "int")]
