"""Short training runs per optimizer on the tiny tasks, through the sweep runner, losses in extra_info.

    pytest suites/test_bench_training.py --benchmark-json=results/bench.json
    pytest suites/test_bench_training.py --slimbench-large            # every tiny task at its preset length
    pytest suites/test_bench_training.py --slimbench-runs-dir results/runs/suite   # keep the run files too

Default cases (minutes on 2 cores): every registry optimizer on ``digits`` (its full 150-step tiny preset),
and the core three (SlimAdam with the paper rules, AdamW, AdaLayer) on ``gpt`` for 100 steps. The timed
call is the whole run (``slimbench.bench.runner.run``, one round: a run is deterministic, repeating it
measures nothing new). ``extra_info`` holds the training loss at fixed steps, the final and best
validation loss, the divergence flag and step, and the state bytes.

Learning rate: the task preset's lr, scaled for optimizers whose natural lr differs from Adam's by the
ratio of their registry ``sensible_lr`` to AdamW's (SGD and SM3 x10, Lion x0.1), so "diverged" means
something for every optimizer at one shared setting rather than "ran at a lr made for another method".
"""
from __future__ import annotations

import pytest
import torch

import benchcases
from slimbench.bench import extra_info
from slimbench.bench.results import RunConfig, save_result
from slimbench.bench.runner import run
from slimbench.registry import REGISTRY, OptimizerUnavailable, available
from slimbench.tasks import DataUnavailable, TASKS, get_spec

_AVAILABLE = {a.name: a for a in available()}
SEED = 0


def lr_for(task: str, optimizer: str, preset: str = "tiny") -> float:
    """The task's lr scaled by the optimizer's sensible lr relative to AdamW's (see the module docstring)."""
    scale = REGISTRY[optimizer].sensible_lr / REGISTRY["adamw"].sensible_lr
    return get_spec(task, preset).lr * scale


def loss_at_steps(n: int) -> list[int]:
    """0, a quarter, half, three quarters and the last step of an n-step run."""
    return sorted({0, n // 4, n // 2, 3 * n // 4, max(n - 1, 0)})


def _cases():
    cases = []
    for name in REGISTRY:
        cases.append(("digits", name, None, False))
    for name in benchcases.CORE_OPTIMIZERS:
        cases.append(("gpt", name, 100, False))
    for task in TASKS:  # large: every tiny task at its preset length, every optimizer
        for name in REGISTRY:
            if task != "digits":
                cases.append((task, name, None, True))
    out = []
    for task, name, steps, large in cases:
        a = _AVAILABLE[name]
        marks = [pytest.mark.large] if large else []
        if not a.ok:
            marks.append(pytest.mark.skip(reason=f"{name} unavailable: {a.reason}"))
        label = f"{task}-{name}" + (f"-{steps}steps" if steps else "")
        out.append(pytest.param(task, name, steps, id=label, marks=marks))
    return out


@pytest.mark.parametrize(("task", "name", "steps"), _cases())
def test_training(benchmark, runs_dir, task: str, name: str, steps: int | None) -> None:
    """One short run: loss at fixed steps, final loss, diverged flag."""
    overrides = {} if steps is None else {"steps": steps}
    if name in benchcases.NO_WEIGHT_DECAY and get_spec(task, "tiny").weight_decay:
        overrides["weight_decay"] = 0.0
    spec = REGISTRY[name]
    config = RunConfig(task=task, optimizer=name, lr=lr_for(task, name), seed=SEED, preset="tiny",
                       rules="paper" if spec.uses_rules else None, overrides=overrides)
    benchmark.group = f"training {task}"
    try:
        result = benchmark.pedantic(run, args=(config,), rounds=1, iterations=1)
    except OptimizerUnavailable as e:
        pytest.skip(f"{name} unavailable: {e.reason}")
    except DataUnavailable as e:
        pytest.skip(f"{task} data unavailable: {e}")
    if runs_dir:
        save_result(result, runs_dir)

    s = result.summary
    n = get_spec(task, "tiny", **overrides).steps
    losses = result.train_loss
    benchmark.extra_info.update(extra_info.make(
        benchcases.KIND_TRAINING, task=task, preset="tiny", optimizer=name, lr=config.lr, seed=SEED, steps=n,
        overrides=dict(config.overrides), run_id=config.run_id, rules=config.rules,
        rules_fingerprint=config.rules_fingerprint(), threads=torch.get_num_threads(), torch=torch.__version__,
        slimbench=benchcases.slimbench_version(), device="cpu", dtype=result.env.get("dtype"),
        loss_at_step={str(i): (losses[i] if i < len(losses) else None) for i in loss_at_steps(n)},
        val_loss_at_step={str(v["step"]): v["loss"] for v in result.val},
        initial_loss=s["initial_loss"], final_train_loss=s["final_train_loss"],
        final_val_loss=s["final_val_loss"], best_val_loss=s["best_val_loss"],
        diverged=result.status == "diverged", diverged_step=s["diverged_step"],
        steps_done=s["steps_done"], median_step_time_s=s["median_step_time_s"],
        state_bytes=s["state_bytes"], param_bytes=s["param_bytes"],
        second_moment_saved_fraction=result.memory.get("second_moment_saved_fraction")))
    assert s["steps_done"] >= 1 or result.status == "diverged"
