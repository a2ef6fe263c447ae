"""Memory section: optimizer state, step peak and transient per context (a benchmark shape, a profiled or
audited model, a sweep's task) and optimizer, from every file kind that measured them."""
from __future__ import annotations

from collections import defaultdict

from slimbench.bench import extra_info as xi
from slimbench.report.load import Collection
from slimbench.report.runs import group_runs, optimizer_label, task_label
from slimbench.report.table import Column, finite


def _bench_entries(c: Collection, kind: str) -> list[tuple[str, dict]]:
    """(source path, benchmark entry) for entries whose extra_info kind is ``kind``."""
    return [(item.path, b) for item in c.benchmarks for b in xi.entries(item.data, kind)]


def memory_rows(c: Collection) -> list[dict]:
    """Per context (a benchmark shape, a profiled / audited model, a sweep's task) and optimizer."""
    rows: list[dict] = []
    seen: dict[tuple, dict] = {}

    def add(row: dict) -> None:
        key = (row["context"], row["optimizer"])
        if key in seen:  # the same measurement in several files: one row, every source
            seen[key]["sources"] = sorted(set(seen[key]["sources"]) | set(row["sources"]))
            return
        seen[key] = row
        rows.append(row)

    for path, b in _bench_entries(c, xi.KIND_STEP):
        e = b["extra_info"]
        add({"context": f"step bench {e.get('shape')} ({e.get('device')}, {e.get('dtype')})",
             "optimizer": e.get("optimizer"), "n_params": e.get("n_params"), "param_bytes": e.get("param_bytes"),
             "state_bytes": e.get("state_bytes"), "saved": e.get("second_moment_saved_fraction"),
             "peak_bytes": e.get("peak_step_bytes"), "transient_bytes": e.get("transient_bytes"),
             "within_budget": e.get("within_transient_budget"), "method": _short_method(e.get("memory_method")),
             "sources": [path]})
    for item in c.profiles:
        d = item.data
        ctx = f"profile {d.get('model')} ({d.get('device')}, {d.get('dtype')}, batch {d.get('batch_size')}x{d.get('seq_len')})"
        for r in d.get("optimizers", []):
            if r.get("status") != "ok":
                add({"context": ctx, "optimizer": r.get("optimizer"), "method": f"skipped: {r.get('reason', '')}"[:60],
                     "sources": [item.path]})
                continue
            add({"context": ctx, "optimizer": r["optimizer"], "param_bytes": r.get("param_bytes"),
                 "state_bytes": r.get("state_bytes"), "saved": r.get("second_moment_saved_fraction"),
                 "peak_bytes": r.get("peak_bytes"), "transient_bytes": r.get("transient_bytes"),
                 "within_budget": r.get("within_budget"), "method": _short_method(r.get("method")),
                 "sources": [item.path]})
    for item in c.audits:
        d = item.data
        ctx = f"audit {d.get('model')} ({d.get('dtype')})"
        for r in d.get("optimizers", []):
            if r.get("status") != "ok":
                continue
            add({"context": ctx, "optimizer": r["optimizer"], "n_params": d.get("param_numel"),
                 "param_bytes": r.get("param_bytes"), "state_bytes": r.get("state_bytes"),
                 "saved": r.get("second_moment_saved_fraction"), "method": "meta device (no allocation)",
                 "sources": [item.path]})
    for (task, opt), items in group_runs(c.runs, lambda r: (task_label(r), optimizer_label(r))).items():
        mem = next((i.data.memory for i in items if i.data.memory), None)
        if not mem:
            continue
        add({"context": f"sweep {task}", "optimizer": opt, "n_params": mem.get("param_numel"),
             "param_bytes": mem.get("param_bytes"), "state_bytes": mem.get("state_bytes"),
             "saved": mem.get("second_moment_saved_fraction"), "method": "ledger after step 1",
             "sources": [items[0].path]})
    by_ctx = defaultdict(dict)
    for r in rows:
        by_ctx[r["context"]][r["optimizer"]] = r
    for r in rows:
        if finite(r.get("state_bytes")) and finite(r.get("param_bytes")) and r["param_bytes"]:
            r["ratio"] = r["state_bytes"] / r["param_bytes"]
        ref = by_ctx[r["context"]].get("adamw")
        if ref and finite(r.get("state_bytes")) and ref.get("state_bytes"):
            r["vs_adamw"] = r["state_bytes"] / ref["state_bytes"]
    return rows


def _short_method(method: str | None) -> str | None:
    return method.split(":")[0] + (" (allocator)" if method.startswith("cuda") else " (dispatch tracker)") \
        if method else None


MEMORY_COLUMNS = [Column("context", "context"), Column("optimizer", "optimizer"),
                  Column("state_bytes", "state MiB", "mib"), Column("ratio", "x params", "x2"),
                  Column("vs_adamw", "vs AdamW", "x2"), Column("saved", "V saved", "pct"),
                  Column("peak_bytes", "peak MiB", "mib"), Column("transient_bytes", "step transient MiB", "mib"),
                  Column("within_budget", "in budget", "bool"), Column("method", "method")]
