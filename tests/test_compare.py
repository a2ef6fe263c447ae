"""Regression gate: checks parse like pytest-benchmark's; identical results pass; regressed ones fail."""
from __future__ import annotations

import json
import shutil

import pytest

from slimbench.bench.results import RunConfig, load_result, save_result
from slimbench.cli import main
from slimbench.report import load
from slimbench.report.compare import (DEFAULT_CHECKS, DifferenceCheck, ExactCheck, PercentageCheck, compare,
                                      entries, parse_check)
from synthetic_results import bench_entry, make_run, write_bench, write_runs


def _baseline_runs() -> list:
    return [make_run("adamw", 1e-3, 0, final=2.0, state_bytes=2000, step_time=0.010),
            make_run("slimadam", 1e-3, 0, final=2.02, state_bytes=1010, saved=0.99, step_time=0.009),
            make_run("adalayer", 1e-3, 0, final=2.10, state_bytes=1000, saved=1.0, step_time=0.008)]


def _gate(tmp_path, new_runs, checks=DEFAULT_CHECKS, **kw):
    base = write_runs(tmp_path / "base", _baseline_runs())
    new = write_runs(tmp_path / "new", new_runs)
    return compare(load([base]), load([new]), checks, **kw)


def _replace(runs, optimizer, **changes):
    out = []
    for r in runs:
        if r.config.optimizer == optimizer:
            kw = dict(final=2.02, state_bytes=1010, saved=0.99, step_time=0.009) | changes
            r = make_run(optimizer, r.config.lr, r.config.seed, **kw)
        out.append(r)
    return out


# ---------------------------------------------------------------------------------------------------------
# checks


def test_parse_check_forms():
    assert parse_check("state_bytes:exact") == ExactCheck("state_bytes")
    assert parse_check("final_loss:5%") == PercentageCheck("final_loss", 5.0)
    assert parse_check("diverged:0") == DifferenceCheck("diverged", 0.0)
    assert parse_check(" final_loss : 0.02 ") == DifferenceCheck("final_loss", 0.02)
    assert parse_check("step_ratio:12.5%").text == "step_ratio:12.5%"
    for bad, msg in (("final_loss", "expected METRIC"), ("bogus:5%", "unknown metric 'bogus'"),
                     ("final_loss:-5%", "must be >= 0"), ("final_loss:five", "expected METRIC")):
        with pytest.raises(ValueError, match=msg):
            parse_check(bad)


def test_check_direction():
    assert PercentageCheck("final_loss", 5).fails(2.0, 2.11) and not PercentageCheck("final_loss", 5).fails(2.0, 2.09)
    assert not PercentageCheck("final_loss", 5).fails(2.0, 1.0)  # better is never a regression
    assert PercentageCheck("saved_fraction", 1).fails(0.99, 0.5)  # larger is better for this one
    assert ExactCheck("state_bytes").fails(1000, 999)  # any change, either way
    assert DifferenceCheck("diverged", 0).fails(0, 1) and not DifferenceCheck("diverged", 0).fails(1, 0)


# ---------------------------------------------------------------------------------------------------------
# the gate on run results


def test_identical_runs_pass(tmp_path):
    result = _gate(tmp_path, _baseline_runs())
    assert not result.failed and set(result.counts()) == {"same"}
    assert result.moved() == []


def test_doubled_state_bytes_fails(tmp_path):
    result = _gate(tmp_path, _replace(_baseline_runs(), "slimadam", state_bytes=2020))
    assert result.failed
    (d,) = result.regressions
    assert (d.metric, d.status, d.baseline, d.new) == ("state_bytes", "changed", 1010, 2020)
    assert d.relative == pytest.approx(1.0) and d.key.startswith("run gpt_tiny_slimadam")


def test_diverged_run_fails(tmp_path):
    result = _gate(tmp_path, _replace(_baseline_runs(), "slimadam", diverged_at=4))
    assert result.failed
    failed = {d.metric: d for d in result.regressions}
    assert failed["diverged"].new == 1.0 and failed["final_loss"].new is None


def test_worse_loss_fails_beyond_tolerance_only(tmp_path):
    worse = _gate(tmp_path / "a", _replace(_baseline_runs(), "slimadam", final=2.02 * 1.10))
    assert worse.failed and [d.metric for d in worse.regressions] == ["final_loss"]
    slight = _gate(tmp_path / "b", _replace(_baseline_runs(), "slimadam", final=2.02 * 1.03))
    assert not slight.failed and [d.status for d in slight.deltas if d.metric == "final_loss" and d.change] == ["within"]
    better = _gate(tmp_path / "c", _replace(_baseline_runs(), "slimadam", final=1.5))
    assert not better.failed and any(d.status == "improved" for d in better.moved())


def test_step_ratio_is_relative_to_adamw_in_the_same_set(tmp_path):
    # everything twice as slow (another machine): ratios unchanged, gate passes
    slow = [make_run(r.config.optimizer, r.config.lr, r.config.seed, final=r.summary["final_val_loss"],
                     state_bytes=r.memory["state_bytes"], saved=r.memory["second_moment_saved_fraction"],
                     step_time=2 * r.step_time_s[0]) for r in _baseline_runs()]
    assert not _gate(tmp_path / "a", slow).failed
    # only slimadam twice as slow: its ratio to adamw doubles
    result = _gate(tmp_path / "b", _replace(_baseline_runs(), "slimadam", step_time=0.018))
    assert [(d.metric, d.status) for d in result.regressions] == [("step_ratio", "regressed")]


def test_missing_and_new_entries(tmp_path):
    runs = _baseline_runs()
    result = _gate(tmp_path / "a", runs[:2] + [make_run("adam", 1e-3, 0)])
    assert result.failed and [d.status for d in result.regressions] == ["missing"]
    assert any(d.status == "new" for d in result.deltas)
    allowed = _gate(tmp_path / "b", runs[:2], allow_missing=True)
    assert not allowed.failed


# ---------------------------------------------------------------------------------------------------------
# the gate on benchmark JSON


def test_benchmark_step_ratio_and_state_bytes(tmp_path):
    base = write_bench(tmp_path / "base.json", [bench_entry("adamw-gpt-3m", "adamw", ratio=1.0),
                                                bench_entry("slimadam-gpt-3m", "slimadam", ratio=1.1, state_bytes=1010)])
    same_other_machine = write_bench(tmp_path / "ok.json", [
        bench_entry("adamw-gpt-3m", "adamw", ratio=1.05, min_s=0.03),
        bench_entry("slimadam-gpt-3m", "slimadam", ratio=1.4, state_bytes=1010, min_s=0.04)])
    assert not compare(load([base]), load([same_other_machine])).failed  # +27% ratio < 50%; absolute times ignored
    slower = write_bench(tmp_path / "slow.json", [
        bench_entry("adamw-gpt-3m", "adamw", ratio=1.0),
        bench_entry("slimadam-gpt-3m", "slimadam", ratio=2.2, state_bytes=1010)])
    result = compare(load([base]), load([slower]))
    assert result.failed and [(d.metric, d.key.endswith("[slimadam-gpt-3m]")) for d in result.regressions] == \
        [("step_ratio", True)]


def test_training_benchmark_divergence(tmp_path):
    def entry(diverged: bool, final: float | None):
        return bench_entry("digits-slimadam", "slimadam", kind="training", final_val_loss=final, best_val_loss=final,
                           diverged=diverged)

    base = write_bench(tmp_path / "base.json", [entry(False, 0.5)])
    assert not compare(load([base]), load([write_bench(tmp_path / "same.json", [entry(False, 0.5)])])).failed
    result = compare(load([base]), load([write_bench(tmp_path / "div.json", [entry(True, None)])]))
    assert {d.metric for d in result.regressions} == {"diverged", "final_loss"}


# ---------------------------------------------------------------------------------------------------------
# a real run, regressed on disk, and the CLI


def test_real_run_regressed_on_disk_fails_cli_gate(tmp_path, capsys):
    pytest.importorskip("sklearn")
    from slimbench.bench.runner import run

    base = tmp_path / "base"
    for name in ("adamw", "slimadam"):
        save_result(run(RunConfig(task="digits", optimizer=name, lr=1e-2, overrides={"steps": 5})), base)
    new = tmp_path / "new"
    shutil.copytree(base, new)
    assert main(["compare", str(base), str(new)]) == 0
    assert "ok: no regression" in capsys.readouterr().out

    path = next(new.glob("*slimadam*.json"))
    regressed = load_result(path)
    regressed.memory = dict(regressed.memory, state_bytes=2 * regressed.memory["state_bytes"])
    regressed.val[-1] = {"step": regressed.val[-1]["step"], "loss": 1.2 * regressed.val[-1]["loss"]}
    save_result(regressed, new)
    assert main(["compare", str(base), str(new), "--out", str(tmp_path / "cmp.json")]) == 1
    out = capsys.readouterr()
    assert "CHANGED" in out.out and "REGRESSED" in out.out and "REGRESSION: 2 failed" in out.err
    written = json.loads((tmp_path / "cmp.json").read_text())
    assert written["format"] == "slimbench.comparison"
    # --json, the flag's old name, writes the same file
    assert main(["compare", str(base), str(new), "--json", str(tmp_path / "old.json")]) == 1
    assert json.loads((tmp_path / "old.json").read_text()) == written


def test_cli_bad_input_exits_2(tmp_path, capsys):
    base = write_runs(tmp_path / "base", _baseline_runs())
    assert main(["compare", str(base), str(base), "--check", "nope:1%"]) == 2
    assert "unknown metric" in capsys.readouterr().err
    assert main(["compare", str(base)]) == 2  # argparse: NEW is required; one line, no usage dump
    assert capsys.readouterr().err == ("error: python -m slimbench compare: the following arguments are required: "
                                       "NEW (see --help)\n")
    assert main(["compare", str(tmp_path / "missing"), str(base)]) == 2


# ---------------------------------------------------------------------------------------------------------
# lr band width and the one meaning of step ratio


def _lr_sweep(folder, slim_losses):
    runs = []
    for lr, adamw in {1e-3: 2.2, 3e-3: 2.0, 1e-2: 2.05, 3e-2: 2.6}.items():
        runs.append(make_run("adamw", lr, 0, final=adamw))
        runs.append(make_run("slimadam", lr, 0, final=slim_losses[lr], state_bytes=1010))
    return write_runs(folder, runs)


def test_lr_width_gates_robustness(tmp_path):
    wide = {1e-3: 2.05, 3e-3: 2.0, 1e-2: 2.02, 3e-2: 2.08}  # all within 5% of 2.0: width 30x
    narrow = {1e-3: 2.3, 3e-3: 2.0, 1e-2: 2.2, 3e-2: 2.5}  # only the best lr: width 1x
    base, new = _lr_sweep(tmp_path / "base", wide), _lr_sweep(tmp_path / "new", narrow)
    ok = compare(load([base]), load([base]), ["lr_width:0%"])
    band = [d for d in ok.deltas if d.metric == "lr_width"]
    assert {d.key for d in band} == {"lr band gpt/tiny steps=10 adamw", "lr band gpt/tiny steps=10 slimadam"}
    assert {d.key: d.baseline for d in band}["lr band gpt/tiny steps=10 slimadam"] == pytest.approx(30.0)
    assert not ok.failed
    result = compare(load([base]), load([new]), ["lr_width:50%"])
    assert [(d.key, d.status, d.new) for d in result.regressions] == \
        [("lr band gpt/tiny steps=10 slimadam", "regressed", 1.0)]
    assert parse_check("lr_width:2").text == "lr_width:2"


def test_fused_step_ratio_divides_by_adamw_of_the_same_kind(tmp_path):
    ms = {"adamw_fused": 2.0, "adamw_foreach": 10.0, "slimadam_foreach": 4.0, "slimadam_fused": 1.6}
    info = {"size": "s", "n_params": 10, "device": "cpu", "dtype": "float32", "threads": 1,
            "ms_per_step": {p: {"min": v, "median": v} for p, v in ms.items()}, "state_bytes": {p: 1 for p in ms}}
    benches = []
    for p in ms:
        e = bench_entry(f"s-{p}", p, kind="fused_step", path=p)
        e["extra_info"].update(info)
        benches.append(e)
    c = load([write_bench(tmp_path / "fused.json", benches)])
    ratios = {k.rsplit("[", 1)[1].rstrip("]"): e.metrics["step_ratio"] for k, e in entries(c).items()}
    assert ratios == {"s-adamw_fused": pytest.approx(1.0), "s-adamw_foreach": pytest.approx(1.0),
                      "s-slimadam_foreach": pytest.approx(0.4), "s-slimadam_fused": pytest.approx(0.8)}
