"""The experiment recipes (slimbench.experiments): every --quick variant runs and writes its outputs.

Two quick experiments run in the default test run (about 15 s together on 2 shared cores); the others are
marked slow (``pytest -m slow tests/test_experiments.py``).
"""
from __future__ import annotations

import json
import shlex

import pytest

from slimbench.cli import main
from slimbench.experiments import EXPERIMENTS, SweepStep, get_experiment, run_experiment
from slimbench.report import load
from slimbench.snr.record import load_snr
from slimbench.report.lr import lr_rows, lr_summary_rows

FAST = ("snr-by-layer", "transfer")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """Each quick experiment run once per module: name -> ExperimentResult."""
    done = {}

    def get(name):
        if name not in done:
            done[name] = run_experiment(name, quick=True, out=tmp_path_factory.mktemp(name))
        return done[name]

    return get


def _check(result, name):
    summary = json.loads((result.out / "summary.json").read_text())
    assert summary["format"] == "slimbench.experiment" and summary["experiment"] == name
    assert summary["quick"] is True
    assert result.analysis.tables, "an experiment must produce at least one table"
    assert not result.analysis.missing, result.analysis.missing
    assert not result.errors, result.errors
    assert all(s["status"] == "ran" for s in summary["steps"])
    md = (result.out / "tables.md").read_text()
    assert md.startswith("# ")
    # summary.json and tables.md hold every table (raw values, one per header) and every plot drawn
    assert [t["title"] for t in summary["tables"]] == [t.title for t in result.analysis.tables]
    for t in summary["tables"]:
        assert f"## {t['title']}" in md and all(len(r) == len(t["headers"]) for r in t["rows"]), t["title"]
    for p in summary["plots"]:
        assert (result.out / p["file"]).stat().st_size > 0 and f"]({p['file']})" in md


@pytest.mark.parametrize("name", [pytest.param(n, marks=[] if n in FAST else [pytest.mark.slow])
                                  for n in EXPERIMENTS])
def test_quick_variant_runs(name, quick):
    _check(quick(name), name)


def test_transfer_loss_vs_lr_is_the_reports(quick):
    """The loss-vs-lr table and plot are slimbench.report's rows and U-curve, not a second computation."""
    result = quick("transfer")
    (grid,) = [t for t in result.analysis.tables if t.title.startswith("Target model")]
    for row in grid.rows:
        (ref,) = lr_rows(load([result.out / "runs" / row["optimizer"]]))
        assert row[f"lr{ref['lr']:g}"] == (ref["final_mean"], None)  # one seed: no half-range
        assert row["state_bytes"] > 0
    assert (result.out / "lr-target-gpt.png").exists()


def test_experiment_figures_are_the_reports(quick):
    """The experiments draw with slimbench.report's figures: the transfer target's U-curve and loss-vs-step
    panels; snr-by-layer's SNR per type, vs depth and vs step, the depth figure's numbers its table's."""
    from slimbench.report.figures import snr_record_figures

    transfer = quick("transfer")
    titles = {p["title"]: p["file"] for p in json.loads((transfer.out / "summary.json").read_text())["plots"]}
    assert titles == {"Loss vs lr: target gpt": "lr-target-gpt.png", "Loss vs step: target gpt": "steps-target-gpt.png"}
    snr = quick("snr-by-layer")
    assert {"snr-types-gpt.png", "snr-depth-gpt.png", "snr-steps-gpt.png"} <= {p.name for p in snr.files}
    per_param = next(t for t in snr.analysis.tables if t.title.startswith("SNR per parameter"))
    depth = next(d for d in snr_record_figures(load_snr(snr.out / "snr" / "gpt.json"), "gpt", snr.out / "check")
                 if d.title.startswith("SNR vs depth"))
    for name, layer_type, block, *per_role, _ in per_param.values():
        if block == "-":
            continue
        for role_name, v in zip(("fan_out", "fan_in", "both"), per_role):
            if v is not None and v > 0:
                assert (block, v) in depth.data[(layer_type, role_name)], (name, role_name)


@pytest.mark.slow
def test_headline_best_lr_and_width_are_the_reports(quick):
    result = quick("headline")
    (best,) = [t for t in result.analysis.tables if t.title.endswith("optimizer state memory")]
    ref = {s["optimizer"].split("[")[0]: s for s in lr_summary_rows(lr_rows(load([result.out / "runs" / "gpt"])))}
    for row in best.rows:
        assert (row["best_lr"], row["best"], row["robust_width"]) == (
            ref[row["optimizer"]]["best_lr"], ref[row["optimizer"]]["best_loss"], ref[row["optimizer"]]["robust_width"])
    adam_best = result.analysis.findings["gpt"]["adam_best_lr"]
    assert adam_best == ref["adamw"]["best_lr"]
    assert {"lr-gpt.png", "steps-gpt.png"} <= {p.name for p in result.files}  # one steps panel per lr


def test_snr_by_layer_rows_and_resume(tmp_path):
    out = tmp_path / "e1"
    first = run_experiment("snr-by-layer", quick=True, out=out)
    types = [r[0] for r in first.analysis.tables[0].values()]
    assert {"query", "key", "value", "attn_out", "mlp_up", "mlp_down", "embedding"} <= set(types)
    assert types[-1] == "norm (1-D)"
    # Rerunning computes nothing: every step's output exists, and the wall time of the first run is kept.
    second = run_experiment("snr-by-layer", quick=True, out=out)
    assert [s.status for s in second.steps] == ["skipped (output exists)"] * 2
    summary = json.loads((out / "summary.json").read_text())
    assert all(s["status"] == "ran" and s["wall_time_s"] > 0 for s in summary["steps"])
    assert second.analysis.tables[1].title.startswith("Seed check")
    assert second.analysis.tables[0].rows == first.analysis.tables[0].rows


def test_analyze_only_lists_missing_outputs(tmp_path):
    result = run_experiment("lr-vs-snr", quick=True, out=tmp_path, analyze_only=True)
    assert result.analysis.missing and not result.analysis.tables
    assert all(s.status == "not run" for s in result.steps)


def test_plans_use_existing_commands(tmp_path):
    """Every step is one of the library calls behind snr / rules / run, and says which command it equals."""
    for exp in EXPERIMENTS.values():
        for quick in (True, False):
            for step in exp.plan(quick):
                cmd = step.command(tmp_path)
                assert cmd.startswith(("python -m slimbench ", "(rules file")), cmd
                if isinstance(step, SweepStep):
                    step.sweep(tmp_path).runs()  # validates task, settings and optimizer names


def test_cli_list_and_unknown(capsys):
    assert main(["experiment", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in EXPERIMENTS)
    assert main(["experiment", "nope"]) == 2
    assert "unknown experiment 'nope'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown experiment"):
        get_experiment("nope")


def test_cli_quick_writes_tables(tmp_path, capsys):
    assert main(["experiment", "snr-by-layer", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "SNR per layer type" in out and "agreement" in out
    assert (tmp_path / "summary.json").exists() and (tmp_path / "snr" / "gpt.json").exists()


def _plan(name, out, capsys):
    assert main(["experiment", name, "--quick", "--plan", "--out", str(out)]) == 0
    argvs = [shlex.split(line) for line in capsys.readouterr().out.splitlines()]
    assert all(a[:3] == ["python", "-m", "slimbench"] for a in argvs if not a[0].startswith("(")), argvs
    return argvs


def test_printed_plan_after_the_experiment_creates_no_new_runs(quick, capsys):
    """Issue 15: the printed sweep commands lacked the experiment's warmup_steps, so they named other run ids
    (``..._d1961de2`` for the experiment's ``..._134953ca``) and trained everything again."""
    result = quick("transfer")
    before = {p: p.stat().st_mtime_ns for p in (result.out / "runs").rglob("*.json")}
    runs = [a for a in _plan("transfer", result.out, capsys) if a[3] == "run"]
    assert len(runs) == 4 and len(before) == 4
    for argv in runs:
        assert main(argv[3:]) == 0
        assert "1 runs -> " in (err := capsys.readouterr().err) and "1 already done, 0 to run" in err, err
    assert {p: p.stat().st_mtime_ns for p in (result.out / "runs").rglob("*.json")} == before


def test_printed_snr_command_reproduces_the_record(quick, capsys, tmp_path):
    """The printed snr command trains the same task (warmup included) on the same schedule (step 1 kept)."""
    result = quick("transfer")
    (argv,) = [a for a in _plan("transfer", result.out, capsys) if a[3] == "snr" and a[-1].endswith("proxy.json")]
    mine = load_snr(argv[-1])
    argv[-1] = str(tmp_path / "again.json")
    assert main([*argv[3:], "--no-progress"]) == 0
    again = load_snr(tmp_path / "again.json")
    assert again.steps == mine.steps and again.steps[0] == 1
    assert again.run["task"] == mine.run["task"] and again.schedule == mine.schedule
    assert again.snr == mine.snr  # one thread in both (conftest pins it; the experiment's default)
