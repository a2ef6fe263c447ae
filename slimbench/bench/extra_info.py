"""The pytest-benchmark ``extra_info`` layouts: one schema that the suites write through and the report and
the regression gate read through.

pytest-benchmark saves a free-form ``extra_info`` dict per benchmark. slimbench's suites fill it with one
of three layouts, told apart by ``kind``:

* ``step_time`` (suites/test_bench_step.py): one optimizer step on a GPT-style parameter set, its state
  and step memory, and its time against ``torch.optim.AdamW(foreach=True)`` timed in the same test
  (``ratio_to_adamw_foreach``: ratio of minima over rounds, ``..._median``: of medians).
* ``training`` (suites/test_bench_training.py): a short run through the sweep runner, losses at fixed
  steps, final / best validation loss, divergence, state bytes.
* ``fused_step`` (suites/test_bench_fused.py): one size's interleaved comparison of every optimizer path
  (``ms_per_step`` {path: {min, median}}, ``effective_GBps``, ``state_bytes``, ``transient_bytes`` per
  path, the issue's ``ratio`` / ``targets_met``), plus the test's own ``path``. Its roofline, per path:
  ``bytes_per_param`` (the byte model: 7 elements per parameter for AdamW, 5 plus the reduced V for
  SlimAdam), ``copy_GBps`` (a ``copy_`` of as many bytes, timed in the same rounds) and ``pct_of_copy``;
  read through :func:`fused_roofline`, which also serves files written before these keys.

**Step ratio**, one meaning everywhere (report tables, figures, ``compare --check step_ratio``): a step's
fastest time over the fastest time of the AdamW step *of the same kind* measured in the same run. Fused
and compiled paths compare with fused AdamW, every other path (for-loop, foreach, any registry
optimizer) with foreach AdamW. Minima, because on shared cores other processes only ever add time.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

EXTRA_VERSION = 1  # version of the layouts below
KIND_STEP = "step_time"
KIND_TRAINING = "training"
KIND_FUSED = "fused_step"
KINDS = (KIND_STEP, KIND_TRAINING, KIND_FUSED)

# Keys each kind always writes (beyond kind / extra_version); extra keys are allowed and kept as written.
REQUIRED: dict[str, frozenset[str]] = {
    KIND_STEP: frozenset({"optimizer", "shape", "device", "dtype", "foreach", "threads"}),
    KIND_TRAINING: frozenset({"task", "preset", "optimizer", "lr", "seed", "steps", "final_val_loss", "diverged"}),
    KIND_FUSED: frozenset({"size", "n_params", "device", "dtype", "threads", "ms_per_step"}),
}


def make(kind: str, **fields: Any) -> dict:
    """The ``extra_info`` of one benchmark of ``kind``: ``{"kind", "extra_version", **fields}``.

    Raises ValueError for an unknown kind or a missing required key, so a suite cannot write a layout the
    readers do not know.
    """
    if kind not in REQUIRED:
        raise ValueError(f"unknown extra_info kind {kind!r}; kinds: {', '.join(KINDS)}")
    missing = sorted(REQUIRED[kind] - set(fields))
    if missing:
        raise ValueError(f"extra_info kind {kind!r}: missing {', '.join(missing)}")
    return {"kind": kind, "extra_version": EXTRA_VERSION, **fields}


def kind(entry: Mapping) -> str | None:
    """The layout of one pytest-benchmark entry (None: not one of slimbench's)."""
    return (entry.get("extra_info") or {}).get("kind")


def entries(doc: Mapping, of_kind: str) -> list[dict]:
    """The benchmark entries of one pytest-benchmark JSON document whose extra_info is ``of_kind``."""
    return [b for b in doc.get("benchmarks", []) if kind(b) == of_kind]


def reference_path(path: str) -> str:
    """The AdamW path a path's step ratio divides by: fused with fused, everything else with foreach."""
    return "adamw_fused" if path.endswith(("_fused", "_compiled")) else "adamw_foreach"


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def ratio(own: Any, ref: Any) -> float | None:
    """``own / ref`` when both are finite and ``ref`` is positive, else None."""
    a, b = _num(own), _num(ref)
    return a / b if a is not None and b else None


def fused_step_ratio(info: Mapping, path: str) -> float | None:
    """Step ratio of one path of a ``fused_step`` entry (see the module docstring)."""
    ms = info.get("ms_per_step") or {}
    return ratio((ms.get(path) or {}).get("min"), (ms.get(reference_path(path)) or {}).get("min"))


def step_ratio(entry: Mapping) -> float | None:
    """Step ratio of one benchmark entry: step_time's own ratio, a fused test's path; None for training."""
    info = entry.get("extra_info") or {}
    k = info.get("kind")
    if k == KIND_STEP:
        return _num(info.get("ratio_to_adamw_foreach"))
    if k == KIND_FUSED and info.get("path"):
        return fused_step_ratio(info, info["path"])
    return None


def fused_sizes(docs: Iterable[tuple[str, Mapping]]) -> list[tuple[str, dict]]:
    """One (source, extra_info) per (file, size, threads): every test of a size carries the same comparison."""
    out, seen = [], set()
    for path, doc in docs:
        for b in entries(doc, KIND_FUSED):
            e = b["extra_info"]
            key = (path, e.get("size"), e.get("threads"))
            if key not in seen:
                seen.add(key)
                out.append((path, e))
    return out


def fused_roofline(info: Mapping, path: str) -> dict[str, float | None]:
    """One path's roofline in a ``fused_step`` entry: bytes per parameter, effective GB/s, the same run's
    copy GB/s and the percentage of it. Recomputed from the raw fields where the entry lacks the derived
    ones (older files: no copy was timed, so the percentage is None)."""
    def get(key: str) -> Any:
        return (info.get(key) or {}).get(path)

    n_bytes, n_params = _num(get("bytes_per_step")), _num(info.get("n_params"))
    per_param = _num(get("bytes_per_param"))
    if per_param is None and n_bytes is not None and n_params:
        per_param = n_bytes / n_params
    gbps = _num(get("effective_GBps"))
    if gbps is None:
        ms = _num((get("ms_per_step") or {}).get("min"))
        gbps = n_bytes / ms / 1e6 if n_bytes is not None and ms else None
    copy = _num(get("copy_GBps"))
    pct = _num(get("pct_of_copy"))
    if pct is None and gbps is not None and copy:
        pct = 100 * gbps / copy
    return {"bytes_per_param": per_param, "gbps": gbps, "copy_gbps": copy, "pct_of_copy": pct}
