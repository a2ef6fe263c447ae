"""Report figures and claims: each figure built from fixture results, its PNG real and its numbers the
tables'; the interval code against known cases; report.html self-contained."""
from __future__ import annotations

import math
import struct

import pytest
from synthetic_results import bench_entry, make_run, write_bench, write_runs

from slimbench.bench.intervals import difference_interval, mean_interval, seed_bootstrap, t975
from slimbench.report import load
from slimbench.report.claims import claim_rows
from slimbench.report.markdown import write_report
from slimbench.report.memory import memory_rows
from slimbench.snr.record import ParamInfo, SNRRecord


def _png_size(path) -> tuple[int, int]:
    head = open(path, "rb").read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def _collection(tmp_path):
    runs = []
    for lr, base in {1e-3: 2.20, 3e-3: 2.00, 1e-2: 2.06}.items():
        for seed in (0, 1, 2):
            runs.append(make_run("adamw", lr, seed, final=base + 0.01 * seed))
            runs.append(make_run("slimadam", lr, seed, final=base + 0.02 + 0.01 * seed, rules="paper",
                                 state_bytes=1010, diverged_at=4 if (lr == 1e-2 and seed == 2) else None))
    write_runs(tmp_path / "sweep", runs)
    params = [ParamInfo("blocks.0.attn.q.weight", (8, 8), "query", True),
              ParamInfo("blocks.1.attn.q.weight", (8, 8), "query", True)]
    snr = {"blocks.0.attn.q.weight": {"0": [0.5, 0.5], "1": [4.0, 6.0], "0,1": [0.4, 0.4]},
           "blocks.1.attn.q.weight": {"0": [0.7, 0.7], "1": [2.0, 4.0], "0,1": [0.5, 0.5]}}
    SNRRecord(params, [1, 2], snr, provenance={"commit": "x"}).save(tmp_path / "snr" / "snr.json")
    ms = {"adamw_fused": 2.0, "adamw_foreach": 10.0, "slimadam_foreach": 4.0, "slimadam_fused": 1.6}
    info = {"size": "s", "n_params": 10, "device": "cpu", "dtype": "float32", "threads": 1,
            "ms_per_step": {p: {"min": v, "median": v} for p, v in ms.items()},
            "effective_GBps": {p: 1 / v for p, v in ms.items()}, "state_bytes": {p: 1 for p in ms}}
    e = bench_entry("s-adamw_fused", "adamw_fused", kind="fused_step", path="adamw_fused")
    e["extra_info"].update(info)
    write_bench(tmp_path / "fused.json", [e])
    return load([tmp_path / "sweep", tmp_path / "snr", tmp_path / "fused.json"])


def test_every_section_has_its_figures_with_the_tables_numbers(tmp_path):
    from slimbench.report import figures
    from slimbench.report.markdown import draw_figures
    from slimbench.report.sections import build_sections
    from slimbench.report.table import Options

    c = _collection(tmp_path)
    sections = build_sections(c, Options())
    drawn = draw_figures(c, sections, tmp_path / "out", Options())
    assert set(drawn) == {"memory", "lr", "claims", "steps", "snr", "step_time"}
    for d in (d for ds in drawn.values() for d in ds):
        w, h = _png_size(d.path)
        assert w >= 400 and h >= 300, d.title
    rows = {s.key: s.tables for s in sections}
    lr_table = next(t for t in rows["lr"] if t.title == "Final loss per learning rate").rows
    (lr_fig,) = drawn["lr"]
    assert _png_size(lr_fig.path) == (770, 506)  # 7.0 x 4.6 in at 110 dpi
    slim = lr_fig.data["SlimAdam (paper rules)"]
    want = [r for r in lr_table if r["optimizer"] == "slimadam" and not r["diverged"]]
    assert slim["lr"] == [r["lr"] for r in want] and slim["mean"] == [r["final_mean"] for r in want]
    assert slim["diverged_lrs"] == [1e-2] and slim["best_lr"] == 3e-3 and "AdamW" in lr_fig.data
    (mq,) = drawn["claims"]
    mem = {r["optimizer"]: r for r in memory_rows(c)}
    claims = {r["optimizer"]: r for r in rows["claims"][0].rows}
    for p in mq.data["points"]:
        opt = "adamw" if p["name"] == "AdamW" else "slimadam"
        assert p["bytes_per_param"] == mem[opt]["state_bytes"] / mem[opt]["n_params"]
        assert p["best_loss"] == claims[opt]["best_loss"]["estimate"]
        assert p["lr_width"] == claims[opt]["lr_width"]["estimate"]
    (steps,) = drawn["steps"]
    assert steps.data[(1e-2, "SlimAdam (paper rules)")]["diverged_at"] == [4]
    assert {d.title.split(":")[0] for d in drawn["snr"]} == {"SNR per layer type", "SNR vs depth", "SNR vs step"}
    types = next(d for d in drawn["snr"] if d.title.startswith("SNR per layer type"))
    snr_row = rows["snr"][0].rows[0]
    assert types.data["fan_in"] == [snr_row["fan_in"]] and types.data["fan_in"][0] == pytest.approx(4.0)
    fused = next(d for d in drawn["step_time"] if "fused" in d.title)
    assert fused.data["vs_adamw"][fused.data["paths"].index("slimadam_fused")] == pytest.approx(0.8)
    # this file predates the copy timing: no share of bandwidth is drawn, none is made up
    assert fused.data["bandwidth_share"] is False and set(fused.data["pct_of_copy"]) == {None}
    assert _png_size(fused.path) == (1320, 429)  # three panels: 12.0 x 3.9 in
    assert figures.Palette(["SlimAdam (paper rules)", "AdamW"])("AdamW") == "#000000"


def test_claims_carry_seed_counts_and_intervals(tmp_path):
    c = _collection(tmp_path)
    rows = {r["optimizer"]: r for r in claim_rows(c)}
    slim = rows["slimadam"]
    assert slim["name"] == "SlimAdam (paper rules)" and slim["seeds"] == 3 and slim["adamw_best_lr"] == 3e-3
    # every seed is exactly 0.02 worse: paired differences have no spread
    assert slim["gap"]["estimate"] == pytest.approx(0.02) and slim["gap"]["method"] == "paired t"
    assert slim["gap"]["lo"] == pytest.approx(0.02) and slim["verdict"] == "worse than AdamW"
    assert rows["adamw"]["gap"] is None and rows["adamw"]["best_lr"]["estimate"] == 3e-3


def test_write_report_writes_html_with_embedded_figures(tmp_path):
    written = write_report(_collection(tmp_path), tmp_path / "out")
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(written.images) > 5
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Comparisons with their uncertainty" in md and "+0.0200 [+0.0200, +0.0200]" in md


def test_t_quantiles_and_intervals_match_known_values():
    assert t975(1) == pytest.approx(12.7062) and t975(10) == pytest.approx(2.2281)
    assert 2.0211 > t975(50) > 2.0003 and t975(10_000) == pytest.approx(1.96, abs=1e-3)
    iv = mean_interval([1.0, 3.0])  # mean 2, s = sqrt 2, se = 1: 2 -+ 12.7062
    assert (iv.estimate, iv.lo, iv.hi, iv.n) == (2.0, pytest.approx(-10.7062), pytest.approx(14.7062), 2)
    assert iv.spans_zero
    iv = mean_interval([4.0, 5.0, 6.0])  # s = 1, se = 1/sqrt 3, t(2) = 4.3027
    assert iv.hi - 5.0 == pytest.approx(4.3027 / math.sqrt(3))
    assert mean_interval([1.0]).lo is None
    d = difference_interval({0: 2.0, 1: 3.0, 2: 4.0}, {0: 1.0, 1: 2.1, 2: 2.9})
    assert d.method == "paired t" and d.estimate == pytest.approx(1.0)
    assert d.hi - d.estimate == pytest.approx(4.3027 * 0.1 / math.sqrt(3))
    w = difference_interval({0: 1.0, 1: 3.0}, {5: 0.0, 6: 0.0})  # no common seeds: Welch, df = 1
    assert w.method == "welch t" and w.estimate == 2.0 and w.hi == pytest.approx(2.0 + 12.7062)


def test_seed_bootstrap_enumerates_every_resample():
    values = {0: 1.0, 1: 3.0}
    iv = seed_bootstrap([0, 1], lambda ss: sum(values[s] for s in ss) / len(ss))
    assert (iv.estimate, iv.lo, iv.hi, iv.method) == (2.0, 1.0, 3.0, "bootstrap")  # resamples 1, 2, 2, 3
    assert seed_bootstrap([0], lambda ss: 5.0).lo is None and seed_bootstrap([0, 1], lambda ss: None) is None


def test_fused_figure_shows_the_share_of_the_copy_bandwidth_the_table_shows(tmp_path):
    """A fused-suite file with the roofline fields: a fourth panel, GB/s as % of the copy timed in the same
    rounds, and its numbers are the fused table's columns."""
    from slimbench.report import figures
    from slimbench.report.step_time import fused_rows

    ms = {"adamw_fused": 2.0, "adamw_foreach": 10.0, "slimadam_fused": 1.6}
    per_param = {"adamw_fused": 28.0, "adamw_foreach": 28.0, "slimadam_fused": 20.06}
    copy = {"adamw_fused": 20.0, "adamw_foreach": 18.0, "slimadam_fused": 25.0}
    gbps = {p: per_param[p] * 1e6 / (ms[p] / 1e3) / 1e9 for p in ms}  # 1M params: 14 GB/s for fused AdamW
    info = {"size": "s", "n_params": 1_000_000, "device": "cpu", "dtype": "float32", "threads": 1,
            "ms_per_step": {p: {"min": v, "median": v} for p, v in ms.items()},
            "effective_GBps": gbps, "bytes_per_param": per_param, "copy_GBps": copy,
            "pct_of_copy": {p: 100 * gbps[p] / copy[p] for p in ms}, "state_bytes": {p: 1 for p in ms}}
    e = bench_entry("s-adamw_fused", "adamw_fused", kind="fused_step", path="adamw_fused")
    e["extra_info"].update(info)
    write_bench(tmp_path / "fused.json", [e])
    c = load([tmp_path / "fused.json"])
    rows = fused_rows(c)
    (d,) = figures.step_time([], rows, tmp_path / "out", figures.Palette([]), {})
    assert d.data["bandwidth_share"] is True and _png_size(d.path) == (1760, 429)  # four panels: 16.0 x 3.9 in
    assert d.data["paths"] == [r["path"] for r in rows]
    assert d.data["gbps"] == [r["gbps"] for r in rows] and d.data["copy_gbps"] == [r["copy_gbps"] for r in rows]
    assert d.data["pct_of_copy"] == [pytest.approx(100 * r["copy_fraction"]) for r in rows]
    slim = d.data["paths"].index("slimadam_fused")
    assert d.data["pct_of_copy"][slim] == pytest.approx(100 * gbps["slimadam_fused"] / 25.0)
    assert d.data["copy_gbps"][slim] == 25.0
