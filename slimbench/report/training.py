"""Training-suite section: the short runs of suites/test_bench_training.py (extra_info kind ``training``)."""
from __future__ import annotations

from slimbench.bench import extra_info as xi
from slimbench.report.load import Collection
from slimbench.report.memory import _bench_entries
from slimbench.report.table import Column, finite


def training_rows(c: Collection) -> list[dict]:
    rows = []
    for path, b in _bench_entries(c, xi.KIND_TRAINING):
        e = b["extra_info"]
        losses = e.get("loss_at_step") or {}
        rows.append({"task": f"{e.get('task')}/{e.get('preset')}", "optimizer": e.get("optimizer"),
                     "lr": e.get("lr"), "steps": e.get("steps"),
                     "loss_at": ", ".join(f"{k}: {v:.3f}" if finite(v) else f"{k}: -" for k, v in losses.items()),
                     "final_val_loss": e.get("final_val_loss"), "diverged": e.get("diverged"),
                     "state_bytes": e.get("state_bytes"), "wall_s": b["stats"].get("min"),
                     "sources": [path]})
    return rows


TRAINING_COLUMNS = [Column("task", "task"), Column("optimizer", "optimizer"), Column("lr", "lr", "g"),
                    Column("steps", "steps", "int"), Column("loss_at", "train loss at step"),
                    Column("final_val_loss", "final val", "f4"), Column("diverged", "diverged", "bool"),
                    Column("state_bytes", "state MiB", "mib"), Column("wall_s", "wall s", "f2")]
