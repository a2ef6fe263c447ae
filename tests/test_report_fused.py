"""Report: the fused-kernel suite's tables (kind fused_step) from a synthetic benchmark file."""
from __future__ import annotations

import pytest
from synthetic_results import bench_entry, write_bench

from slimbench.report import load
from slimbench.report.sections import build_sections
from slimbench.report.step_time import fused_rows, fused_target_rows


def _fused_info() -> dict:
    ms = {"adamw_fused": 2.0, "adamw_foreach": 10.0, "slimadam_foreach": 4.0, "slimadam_fused": 1.6}
    return {"size": "gpt-4m", "n_params": 4_000_000, "device": "cpu", "dtype": "bfloat16", "threads": 1,
            "ms_per_step": {p: {"min": v, "median": 1.1 * v} for p, v in ms.items()},
            "ratio": {"slimadam_fused/adamw_fused": {"min": 0.8, "median": 0.85},
                      "slimadam_foreach/adamw_foreach": {"min": 0.4, "median": 0.45}},
            "targets_met": {"slimadam_fused/adamw_fused": {"target": 1.0, "met": True},
                            "slimadam_foreach/adamw_foreach": {"target": 0.75, "met": True},
                            "transient slimadam_fused<=adamw_fused": {"met": False}},
            "effective_GBps": {p: 28 / v for p, v in ms.items()}, "state_bytes": {p: 100 for p in ms},
            "transient_bytes": {"adamw_fused": 0, "adamw_foreach": 4096, "slimadam_foreach": 0, "slimadam_fused": 8192},
            "compile_s": 9.5, "native_build_s": 0.4}


def test_fused_rows_compare_each_path_with_adamw_of_its_kind(tmp_path):
    info = _fused_info()
    # Two tests of the same size carry the same comparison: it is shown once.
    entries = [bench_entry(f"gpt-4m-{p}", p, kind="fused_step", path=p) for p in ("adamw_fused", "slimadam_fused")]
    for e in entries:
        e["extra_info"].update(info)  # bench_entry's own `ratio` argument would swallow info["ratio"]
    write_bench(tmp_path / "fused.json", entries)
    c = load([tmp_path / "fused.json"])
    rows = {r["path"]: r for r in fused_rows(c)}
    assert len(fused_rows(c)) == 4
    assert rows["slimadam_fused"]["vs_adamw"] == pytest.approx(1.6 / 2.0)
    assert rows["slimadam_foreach"]["vs_adamw"] == pytest.approx(4.0 / 10.0)
    assert rows["adamw_fused"]["vs_adamw"] is None and rows["adamw_fused"]["dtype"] == "bfloat16"
    assert rows["slimadam_fused"]["transient_bytes"] == 8192 and rows["slimadam_fused"]["gbps"] == pytest.approx(17.5)
    targets = {r["target"]: r for r in fused_target_rows(c)}
    assert targets["slimadam_fused/adamw_fused"]["ratio"] == 0.8 and targets["slimadam_fused/adamw_fused"]["met"]
    assert targets["transient slimadam_fused<=adamw_fused"]["ratio"] == "8192 B vs 0 B"
    assert not targets["transient slimadam_fused<=adamw_fused"]["met"]
    assert targets["slimadam_foreach/adamw_foreach"]["compile_s"] == 9.5
    step = next(s for s in build_sections(c) if s.key == "step_time")
    assert [t.title for t in step.tables] == ["Fused / foreach kernels (pytest suites)", "Fused kernel targets (issue 7)"]


def test_fused_rows_show_the_roofline_beside_the_ratios(tmp_path):
    """Bytes per parameter, GB/s and the percentage of the same run's copy bandwidth, computed and rendered;
    a file from before the copy was timed keeps its GB/s and shows '-' for the copy columns."""
    from slimbench.report.markdown import table_markdown

    n = 1_000_000
    info = _fused_info()
    info["n_params"] = n
    info["bytes_per_step"] = {"adamw_fused": 28 * n, "adamw_foreach": 28 * n, "slimadam_foreach": 20 * n + 800,
                              "slimadam_fused": 20 * n + 800}
    info["effective_GBps"] = {p: info["bytes_per_step"][p] / v["min"] / 1e6 for p, v in info["ms_per_step"].items()}
    info["copy_GBps"] = {p: 20.0 for p in info["ms_per_step"]}  # a copy of each path's bytes, same rounds
    old = {k: v for k, v in info.items() if k != "copy_GBps"}
    for name, e in (("new", info), ("old", old)):
        entry = bench_entry(f"gpt-4m-{name}", "slimadam_fused", kind="fused_step", path="slimadam_fused")
        entry["extra_info"].update(e)
        write_bench(tmp_path / f"{name}.json", [entry])
    rows = {r["path"]: r for r in fused_rows(load([tmp_path / "new.json"]))}
    fused = rows["slimadam_fused"]
    assert fused["bytes_per_param"] == pytest.approx(20.0008) and rows["adamw_fused"]["bytes_per_param"] == 28
    assert fused["gbps"] == pytest.approx((20 * n + 800) / 1.6e-3 / 1e9)
    assert fused["copy_fraction"] == pytest.approx(fused["gbps"] / 20.0)
    assert rows["adamw_fused"]["copy_fraction"] == pytest.approx(28 * n / 2.0e-3 / 1e9 / 20.0)  # 14 GB/s
    step = next(s for s in build_sections(load([tmp_path / "new.json"])) if s.key == "step_time")
    text = table_markdown(step.tables[0])
    for header in ("vs AdamW (same kind)", "B/param", "effective GB/s", "copy GB/s (same run)", "of copy"):
        assert header in text
    assert "20.00" in text and "28.00" in text and f"{100 * fused['copy_fraction']:.1f}%" in text
    old_rows = {r["path"]: r for r in fused_rows(load([tmp_path / "old.json"]))}
    assert old_rows["slimadam_fused"]["copy_fraction"] is None and old_rows["slimadam_fused"]["gbps"] > 0
