"""Sweeps: the grid, resume after an interruption, errors that do not stop a sweep, executors, the CLI."""
from __future__ import annotations

import errno
import json
import os
import shlex
import subprocess
import sys
import types

import pytest
import torch

from slimbench.bench import sweep as sw
from slimbench.bench.results import load_results, result_path
from slimbench.cli import build_parser, main

FAST = {"steps": 20, "eval_every": 10}


class CountingAdamW:
    """An optimizer factory that counts the runs it builds, and can fail or stop on request."""

    def __init__(self, fail: str | None = None):
        self.calls, self.fail = [], fail

    def __call__(self, name, model, lr, betas=(0.9, 0.999), weight_decay=0.0, rules=None):
        self.calls.append((name, lr))
        if name == self.fail:
            raise RuntimeError("broken optimizer")
        return torch.optim.AdamW(model.parameters(), lr=lr, betas=betas, weight_decay=weight_decay)


def _sweep(**kw) -> sw.SweepConfig:
    return sw.SweepConfig(**{"task": "digits", "optimizers": ("adamw", "adam"), "lrs": (1e-3, 1e-2),
                             "overrides": FAST, **kw})


def test_grid_order_and_validation():
    runs = _sweep(seeds=(0, 1)).runs()
    assert [(r.optimizer, r.lr, r.seed) for r in runs][:3] == [("adamw", 1e-3, 0), ("adamw", 1e-3, 1), ("adamw", 1e-2, 0)]
    assert len(runs) == 8 and len({r.run_id for r in runs}) == 8
    with pytest.raises(ValueError, match="lr must be a finite number >= 0"):
        _sweep(lrs=(1e-3, -1.0)).runs()
    with pytest.raises(ValueError, match="lrs repeats a value"):
        _sweep(lrs=(1e-3, 1e-3))
    with pytest.raises(ValueError, match="optimizers is empty"):
        _sweep(optimizers=())
    with pytest.raises(ValueError, match="unknown task"):
        _sweep(task="imagenet")
    with pytest.raises(ValueError, match="has no setting"):
        _sweep(overrides={"depth": 3})
    with pytest.raises(ValueError, match="unknown optimizer 'adamx'"):
        _sweep(optimizers=("adamw", "adamx"))
    with pytest.raises(ValueError, match="none of adamw, adam takes rules"):
        _sweep(rules="paper")
    mixed = _sweep(optimizers=("adamw", "slimadam"), rules="paper").runs()
    assert [r.rules for r in mixed] == [None, None, "paper", "paper"]


def test_rerun_skips_finished_runs(tmp_path):
    runs = _sweep().runs()
    factory = CountingAdamW()
    outcomes = sw.run_sweep(runs, tmp_path, optimizer_factory=factory)
    assert [o.status for o in outcomes] == ["finished"] * 4 and len(factory.calls) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{r.run_id}.json" for r in runs)
    again = CountingAdamW()
    outcomes = sw.run_sweep(runs, tmp_path, optimizer_factory=again)
    assert [o.status for o in outcomes] == ["done"] * 4 and again.calls == []
    assert outcomes[0].result.summary["steps_done"] == 20
    assert len(load_results(tmp_path)) == 4


def test_interrupted_sweep_loses_only_the_run_in_flight_and_resumes(tmp_path):
    runs = _sweep().runs()

    def interrupt_third_run(kind, cfg, payload):
        if kind == "step" and cfg == runs[2] and payload[0] == 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sw.run_sweep(runs, tmp_path, optimizer_factory=CountingAdamW(), on_event=interrupt_third_run)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{r.run_id}.json" for r in runs[:2])
    kept = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    factory = CountingAdamW()
    outcomes = sw.run_sweep(runs, tmp_path, optimizer_factory=factory)
    assert [o.status for o in outcomes] == ["done", "done", "finished", "finished"]
    assert factory.calls == [(r.optimizer, r.lr) for r in runs[2:]]
    assert all((tmp_path / name).read_bytes() == blob for name, blob in kept.items())
    # the resumed runs equal an uninterrupted sweep, number for number
    fresh = sw.run_sweep(runs, tmp_path / "fresh", optimizer_factory=CountingAdamW())
    assert [o.result.train_loss for o in fresh] == [o.result.train_loss for o in outcomes]


def test_a_failing_run_is_reported_and_the_sweep_goes_on(tmp_path):
    runs = _sweep().runs()
    outcomes = sw.run_sweep(runs, tmp_path, optimizer_factory=CountingAdamW(fail="adam"))
    assert [o.status for o in outcomes] == ["finished", "finished", "error", "error"]
    assert "RuntimeError: broken optimizer" in outcomes[2].message
    assert not result_path(tmp_path, runs[2]).exists()
    with pytest.raises(RuntimeError, match="broken optimizer"):
        sw.run_sweep(runs, tmp_path, optimizer_factory=CountingAdamW(fail="adam"), keep_going=False)


def test_an_unavailable_optimizer_is_skipped_without_a_file(tmp_path):
    from slimbench.registry import OptimizerUnavailable

    def factory(name, model, lr, **kw):
        if name == "adam":
            raise OptimizerUnavailable(name, "package 'x' not importable")
        return CountingAdamW()(name, model, lr, **kw)

    outcomes = sw.run_sweep(_sweep(lrs=(1e-2,)).runs(), tmp_path, optimizer_factory=factory)
    assert [o.status for o in outcomes] == ["finished", "unavailable"]
    assert "not importable" in outcomes[1].message and outcomes[1].path is None
    assert len(list(tmp_path.glob("*.json"))) == 1


def test_diverged_runs_are_final_and_summarised(tmp_path):
    runs = _sweep(optimizers=("adamw",), lrs=(1e-2, 50.0), seeds=(0, 1)).runs()
    outcomes = sw.run_sweep(runs, tmp_path, optimizer_factory=CountingAdamW())
    assert [o.status for o in outcomes] == ["finished", "finished", "diverged", "diverged"]
    assert outcomes[2].message.startswith("diverged at step")
    rows = sw.summary_rows(outcomes)
    assert rows[2]["status"] == "diverged" and rows[2]["final_val_loss"] is None
    best = sw.best_lrs(outcomes)
    assert best == [{"optimizer": "adamw", "best_lr": 1e-2, "seeds": 2, "diverged_lrs": [50.0],
                     "final_val_loss": pytest.approx(sum(o.result.summary["final_val_loss"] for o in outcomes[:2]) / 2)}]
    assert [o.status for o in sw.run_sweep(runs, tmp_path, optimizer_factory=CountingAdamW())] == ["done"] * 4


def test_a_result_from_another_config_or_version_is_an_error(tmp_path):
    runs = _sweep(optimizers=("adamw",), lrs=(1e-2,)).runs()
    sw.run_sweep(runs, tmp_path, optimizer_factory=CountingAdamW())
    path = result_path(tmp_path, runs[0])
    d = json.loads(path.read_text())
    d["task"]["version"] = 0
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="made by digits version 0"):
        sw.run_sweep(runs, tmp_path, optimizer_factory=CountingAdamW())
    d["config"]["seed"] = 5
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="holds a different run"):
        sw.split_done(runs, tmp_path)


def test_printed_commands_reproduce_each_run(tmp_path):
    runs = _sweep(optimizers=("adamw", "slimadam"), rules="paper", overrides={**FAST, "hidden": 32, "betas": [0.9, 0.95]},
                  divergence_factor=5.0).runs()
    lines = sw.commands(runs, tmp_path / "out dir", threads=3)
    assert len(lines) == 4
    for cfg, line in zip(runs, lines):
        argv = shlex.split(line)
        assert argv[:3] == [sys.executable, "-m", "slimbench"]
        args = build_parser().parse_args(argv[3:])
        assert args.threads == 3
        again = sw.SweepConfig(task=args.task, optimizers=args.optimizers, lrs=args.lrs, seeds=args.seeds,
                               preset=args.preset, rules=args.rules, overrides=dict(args.set),
                               divergence_factor=args.divergence_factor).runs()
        assert again == [cfg] and args.out == str(tmp_path / "out dir")


def test_cli_print_commands_and_errors(tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["run", "--task", "digits", "--optimizers", "adamw,sgd", "--lrs", "1e-3,1e-2", "--steps", "20",
                 "--out", str(out), "--print-commands"]) == 0
    got = capsys.readouterr()
    lines = got.out.strip().splitlines()
    prefix = f"{shlex.quote(sys.executable)} -m slimbench run --task digits"
    assert len(lines) == 4 and all(line.startswith(prefix) and " --threads 1 " in line for line in lines)
    assert "4 commands for the pending runs (0 of 4 already done)" in got.err
    assert main(["run", "--task", "digits", "--lrs=-1e-3", "--out", str(out)]) == 2
    assert "error: lr must be a finite number >= 0" in capsys.readouterr().err
    assert main(["run", "--task", "nope", "--out", str(out)]) == 2
    assert "error: unknown task 'nope'" in capsys.readouterr().err
    assert main(["run", "--list-tasks"]) == 0
    assert "finetune" in capsys.readouterr().out


def test_submitit_executor_missing_and_present(tmp_path, monkeypatch):
    runs = _sweep(optimizers=("adamw",), lrs=(1e-2,)).runs()
    monkeypatch.setitem(sys.modules, "submitit", None)  # import fails as if not installed
    with pytest.raises(ValueError, match="pip install submitit") as err:
        sw.run_sweep(runs, tmp_path, executor="submitit")
    assert "pip install -e '.[cluster]'" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="unknown executor 'ray'"):
        sw.run_sweep(runs, tmp_path, executor="ray")

    class Job:
        def __init__(self, fn, *args):
            self.job_id, self.value = "1", fn(*args)

        def result(self):
            return self.value

    class AutoExecutor:
        def __init__(self, folder):
            self.folder, self.params = folder, {}

        def update_parameters(self, **kw):
            self.params.update(kw)

        def submit(self, fn, *args):
            return Job(fn, *args)

    monkeypatch.setitem(sys.modules, "submitit", types.SimpleNamespace(AutoExecutor=AutoExecutor))
    # jobs build optimizers through the registry: stand in for it with torch's AdamW
    monkeypatch.setattr(sw.runner, "build_optimizer", CountingAdamW())
    outcomes = sw.run_sweep(runs, tmp_path, executor="submitit", executor_options={"timeout_min": 5})
    assert [o.status for o in outcomes] == ["finished"] and result_path(tmp_path, runs[0]).exists()


def test_submitit_launches_a_sharded_run_as_one_job_of_n_tasks(tmp_path, monkeypatch):
    """A run with fsdp=N is submitted as one job of N tasks (tasks_per_node=N, or N / nodes) running the
    per-task entry point; an unsharded run of the same sweep gets one task; `cluster` picks the executor
    and is not an update_parameters keyword; jobs get the sweep's threads. (The real local executor with
    2 tasks is tests/test_distributed.py::test_submitit_fsdp_job_matches_one_process.)"""
    import dataclasses

    submitted: list[tuple] = []

    class Job:
        job_id = "7"

        def __init__(self, args):
            self.args = args

        def results(self):
            return [{"status": "finished", "path": None, "message": ""}, None]

        def result(self):
            return {"status": "finished", "path": None, "message": ""}

    class AutoExecutor:
        def __init__(self, folder, cluster=None):
            self.cluster, self.params = cluster, {}

        def update_parameters(self, **kw):
            assert "cluster" not in kw
            self.params.update(kw)

        def submit(self, fn, *args):
            submitted.append((self.cluster, fn, dict(self.params), args))
            return Job(args)

    monkeypatch.setitem(sys.modules, "submitit", types.SimpleNamespace(AutoExecutor=AutoExecutor))
    plain = _sweep(optimizers=("adamw",), lrs=(1e-2,)).runs()
    runs = [dataclasses.replace(plain[0], fsdp=4), plain[0], dataclasses.replace(plain[0], fsdp=2)]
    outcomes = sw.run_sweep(runs, tmp_path, executor="submitit", threads=3,
                            executor_options={"cluster": "local", "timeout_min": 9})
    assert [o.status for o in outcomes] == ["finished"] * 3
    assert [(c, fn, p["tasks_per_node"], p["timeout_min"]) for c, fn, p, _ in submitted] == [
        ("local", sw._submitit_fsdp_job, 4, 9), ("local", sw._submitit_job, 1, 9), ("local", sw._submitit_fsdp_job, 2, 9)]
    assert [a[0]["fsdp"] for *_, a in submitted if "fsdp" in a[0]] == [4, 2] and all(a[2] == 3 for *_, a in submitted)
    submitted.clear()
    sw.run_sweep(runs[:1], tmp_path, executor="submitit", executor_options={"nodes": 2})
    assert submitted[0][2] == {"nodes": 2, "tasks_per_node": 2}
    for opts, msg in (({"nodes": 3}, "cannot spread over nodes=3"), ({"tasks_per_node": 3}, "contradicts fsdp=4")):
        with pytest.raises(ValueError, match=msg):
            sw.run_sweep(runs[:1], tmp_path, executor="submitit", executor_options=opts)


@pytest.mark.realdata
def test_cli_sweep_with_the_real_registry(tmp_path, capsys):
    args = ["run", "--task", "gpt", "--optimizers", "adamw,slimadam", "--lrs", "1e-3,3e-3", "--steps", "40",
            "--set", "n_layer=1", "--set", "eval_batches=2", "--rules", "paper", "--out", str(tmp_path), "--no-progress"]
    assert main(args) == 0
    assert "best lr" in capsys.readouterr().out
    assert len(list(tmp_path.glob("*.json"))) == 4
    assert main(args) == 0
    assert "4 already done" in capsys.readouterr().err


HOSTILE = "out dir 'q\" ; touch semi ; $(touch subst) `touch tick` & touch amp"


def test_printed_commands_are_safe_for_any_out_path(tmp_path, capsys, monkeypatch):
    """The README's runner executes each printed line with `sh -c`: a hostile --out is data, never code."""
    argv = ["run", "--task", "digits", "--optimizers", "adamw", "--lrs", "1e-3,1e-2", "--steps", "2",
            "--set", "eval_every=1", "--out", HOSTILE]
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(argv + ["--print-commands"]) == 0
    printed = capsys.readouterr().out
    assert main(argv + ["--commands-file", str(tmp_path / "jobs.txt")]) == 0
    assert (tmp_path / "jobs.txt").read_text() == printed and "2 commands" in capsys.readouterr().err
    proc = subprocess.run(["sh", "-c", "xargs -d '\\n' -P 2 -I{} sh -c {}"], input=printed, text=True,
                          capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in work.iterdir()] == [HOSTILE]  # no marker file (semi, subst, tick, amp): nothing else ran
    assert len(list((work / HOSTILE).glob("*.json"))) == 2
    assert main(argv + ["--no-progress"]) == 0  # the local loop finds both runs done, under the same ids
    assert "2 already done, 0 to run" in capsys.readouterr().err


def test_a_line_break_in_out_cannot_be_printed_as_one_command(tmp_path):
    runs = _sweep(optimizers=("adamw",), lrs=(1e-2,)).runs()
    with pytest.raises(ValueError, match="line break"):
        sw.commands(runs, tmp_path / "a\nb", threads=1)


def test_a_full_disk_stops_the_sweep_at_the_first_result(tmp_path, monkeypatch, capsys):
    """ENOSPC on saving: one line, exit 2, and no further run trains (it could not be saved either)."""
    from slimbench.bench import results as res

    def full(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(res, "write_json_atomic", full)
    factory = CountingAdamW()
    with pytest.raises(sw.ResultNotSaved, match="No space left on device.*rerun the same command to resume"):
        sw.run_sweep(_sweep().runs(), tmp_path, optimizer_factory=factory)
    assert len(factory.calls) == 1  # stopped after the first run, not after training all four
    assert main(["run", "--task", "digits", "--optimizers", "adamw,sgd", "--lrs", "1e-2", "--steps", "2",
                 "--out", str(tmp_path / "cli"), "--no-progress"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("error: cannot write the result of digits_tiny_adamw") and "No space left" in err[-1]
    assert not any("Traceback" in line for line in err)


def test_an_unwritable_out_fails_before_training(tmp_path, monkeypatch):
    import slimbench.io as sio

    def refuse(path):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(sio, "_new_temp", refuse)
    factory = CountingAdamW()
    with pytest.raises(OSError, match="Read-only"):
        sw.run_sweep(_sweep().runs(), tmp_path, optimizer_factory=factory)
    assert factory.calls == []


def test_bad_rules_are_one_error_before_any_training(tmp_path, capsys):
    bad = tmp_path / "rules.json"
    bad.write_text(json.dumps({"format": "slimbench.rules", "version": 1, "by": "name",
                               "rules": [{"match": "no.such.weight", "dims": [0]}]}))
    argv = ["run", "--task", "digits", "--optimizers", "adamw,slimadam", "--lrs", "1e-3,1e-2", "--steps", "2",
            "--rules", str(bad), "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[1].startswith("error: slimadam (lr 0.001, rules ") and "no.such.weight" in err[1]
    assert list((tmp_path / "out").glob("*.json")) == []


def test_an_lr_that_overflows_the_step_is_recorded_as_diverged_not_retried(tmp_path):
    runs = sw.SweepConfig(task="digits", optimizers=("adamw",), lrs=(1e300,), overrides={"steps": 3}).runs()
    outcomes = sw.run_sweep(runs, tmp_path)
    assert [o.status for o in outcomes] == ["diverged"] and "optimizer step overflowed" in outcomes[0].message
    assert [o.status for o in sw.run_sweep(runs, tmp_path)] == ["done"]  # a resume does not retry it


def test_a_result_file_with_wrong_field_types_is_a_clear_sweep_error(tmp_path, capsys):
    runs = _sweep(optimizers=("adamw",), lrs=(1e-2,)).runs()
    sw.run_sweep(runs, tmp_path, optimizer_factory=CountingAdamW())
    path = result_path(tmp_path, runs[0])
    d = json.loads(path.read_text())
    d["train_loss"] = ["x"]
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="field 'train_loss' must be a list of numbers or nulls"):
        sw.split_done(runs, tmp_path)
    assert main(["run", "--task", "digits", "--optimizers", "adamw", "--lrs", "1e-2", "--steps", "20",
                 "--set", "eval_every=10", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "train_loss" in err
