"""slimbench.loop.train, the one training loop: stop conditions, hooks, schedule, clipping; and that runner runs,
SNR runs and fine-tune pre-training all go through it (same task, seed and lr => the same numbers)."""
from __future__ import annotations

import ast
import math
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from slimbench.bench.results import RunConfig
from slimbench.bench.runner import run
from slimbench import loop
from slimbench.loop import LoopResult, train
from slimbench.snr.run import make_adam, run_snr
from slimbench.snr.tracker import Schedule
from slimbench.tasks import build_task
from slimbench.tasks import data as _data
from slimbench.tasks import specs as _specs


class Regression:
    """A duck-typed task: a linear model on fixed random data; ``losses`` overrides what loss() returns."""

    def __init__(self, losses: dict[int, float] | None = None):
        torch.manual_seed(0)
        self.model = nn.Linear(4, 1)
        self.x, self.y = torch.randn(8, 4), torch.randn(8, 1)
        self.losses, self.calls = losses or {}, []

    def train_batch(self, step: int) -> int:
        self.calls.append(("batch", step))
        return step

    def loss(self, model: nn.Module, step: int) -> torch.Tensor:
        loss = ((model(self.x) - self.y) ** 2).mean()
        if step in self.losses:  # keep the graph, replace the value
            loss = loss * 0 + self.losses[step]
        return loss


class Overflowing(torch.optim.SGD):
    """SGD whose ``at``-th step raises ``message``."""

    def __init__(self, params, at: int, message: str):
        super().__init__(params, lr=0.1)
        self.at, self.message, self.n = at, message, 0

    def step(self, closure=None):
        self.n += 1
        if self.n == self.at:
            raise RuntimeError(self.message)
        return super().step(closure)


def _sgd(task: Regression, lr: float = 0.1) -> torch.optim.Optimizer:
    return torch.optim.SGD(task.model.parameters(), lr=lr)


def test_a_full_run_records_every_step_and_follows_the_schedule():
    task = Regression()
    opt = _sgd(task)
    factor = lambda s: 1.0 / (s + 1)  # noqa: E731
    out = train(task, opt, steps=5, lr_factor=factor)
    assert out.divergence is None and out.steps_done == 5
    assert len(out.train_loss) == len(out.grad_norm) == len(out.lr) == len(out.step_time_s) == 5
    assert out.lr == [0.1 * factor(s) for s in range(5)]
    assert out.train_loss[-1] < out.train_loss[0] and all(t > 0 for t in out.step_time_s)
    assert opt.param_groups[0]["lr"] == out.lr[-1]  # not advanced past the last step
    assert out.completed_losses == out.train_loss


def test_no_schedule_is_a_constant_lr_and_zero_steps_is_nothing():
    task = Regression()
    assert train(task, _sgd(task), steps=3).lr == [0.1] * 3
    task = Regression()
    assert train(task, _sgd(task), steps=0) == LoopResult()


@pytest.mark.parametrize("steps", [-1, 2.0, True, "3"])
def test_bad_steps_are_a_value_error(steps):
    task = Regression()
    with pytest.raises(ValueError, match="steps must be an integer >= 0"):
        train(task, _sgd(task), steps=steps)


def test_grad_norm_is_before_clipping_and_clipping_applies():
    seen = []
    task = Regression()
    out = train(task, _sgd(task), steps=1, grad_clip=1e-3,
                after_step=lambda s, v: seen.append(nn.utils.get_total_norm([p.grad for p in task.model.parameters()])))
    assert out.grad_norm[0] > 1e-2 and float(seen[0]) == pytest.approx(1e-3, rel=1e-3)
    task = Regression()
    out = train(task, _sgd(task), steps=1, grad_clip=None,
                after_step=lambda s, v: seen.append(nn.utils.get_total_norm([p.grad for p in task.model.parameters()])))
    assert out.grad_norm[0] == float(seen[1]) > 1e-2  # measured, not clipped


def test_a_non_finite_loss_stops_at_that_step():
    task = Regression({3: float("nan")})
    after, stops = [], []
    out = train(task, _sgd(task), steps=10, after_step=lambda s, v: after.append(s),
                on_stop=lambda s, v: stops.append((s, v)))
    assert out.divergence == {"step": 3, "loss": "nan", "reason": "loss is not finite"}
    assert len(out.train_loss) == 4 and math.isnan(out.train_loss[3]) and out.steps_done == 3
    assert len(out.lr) == len(out.grad_norm) == 3 and out.completed_losses == out.train_loss[:3]
    assert after == [0, 1, 2] and len(stops) == 1 and stops[0][0] == 3 and math.isnan(stops[0][1])


def test_divergence_factor_stops_only_when_given():
    out = train(Regression({2: 1e6}), _sgd(Regression()), steps=5)
    assert out.divergence is None and out.steps_done == 5
    task = Regression({2: 1e6})
    out = train(task, _sgd(task), steps=5, divergence_factor=3.0)
    assert out.divergence["step"] == 2 and out.divergence["reason"].startswith("loss > 3 x initial loss")
    assert out.steps_done == 2 and out.train_loss[2] == 1e6


def test_an_overflowing_step_is_a_divergence_only_when_asked():
    task = Regression()
    out = train(task, Overflowing(task.model.parameters(), 2, "value overflow"), steps=5, overflow_is_divergence=True)
    assert out.divergence["step"] == 1 and out.divergence["reason"] == "optimizer step overflowed (value overflow)"
    assert len(out.train_loss) == 2 and len(out.lr) == len(out.grad_norm) == out.steps_done == 1
    task = Regression()
    with pytest.raises(RuntimeError, match="value overflow"):
        train(task, Overflowing(task.model.parameters(), 2, "value overflow"), steps=5)
    task = Regression()
    with pytest.raises(RuntimeError, match="something else"):  # only an overflow counts as divergence
        train(task, Overflowing(task.model.parameters(), 1, "something else"), steps=5, overflow_is_divergence=True)


def test_hooks_run_in_order_and_are_not_timed():
    task = Regression()
    events = task.calls
    out = train(task, _sgd(task), steps=3, before_step=lambda s: (events.append(("before", s)), time.sleep(0.2)),
                after_step=lambda s, v: (events.append(("after", s)), time.sleep(0.2)))
    assert events == [(kind, s) for s in range(3) for kind in ("before", "batch", "after")]
    assert max(out.step_time_s) < 0.2
    task.model.eval()
    train(task, _sgd(task), steps=1)
    assert task.model.training  # the loop trains in train mode


def test_scalar_turns_the_grad_norm_into_a_float():
    task = Regression()
    out = train(task, _sgd(task), steps=2, grad_clip=1.0, scalar=lambda t: -1.0)
    assert out.grad_norm == [-1.0, -1.0]


# --- the callers: one loop => the same numbers ----------------------------------------------------------

GPT = {"steps": 12, "n_layer": 1, "eval_every": 6, "eval_batches": 2}


@pytest.mark.parametrize("weight_decay", [0.0, None])
def test_an_snr_run_trains_exactly_like_a_benchmark_run(weight_decay):
    """run_snr and run() step through the same loop: per-step losses and lrs are bit-identical.

    With the registry's AdamW they agree at weight_decay 0 (the registry decays only >= 2-D tensors, an SNR run
    decays every parameter); with the SNR run's own AdamW as the runner's factory they agree at the task's decay.
    """
    overrides = {**GPT, **({} if weight_decay is None else {"weight_decay": weight_decay})}
    losses, lrs = [], []
    record = run_snr(build_task("gpt", "tiny", 0, **overrides), lr=3e-3, schedule=Schedule.parse("every:5"),
                     callback=lambda s, v: losses.append(v))
    factory = None if weight_decay is not None else (
        lambda name, model, lr, betas, weight_decay, rules: make_adam(model, name, lr, betas, weight_decay))
    result = run(RunConfig("gpt", "adamw", 3e-3, overrides=overrides), optimizer_factory=factory)
    assert result.status == "finished" and record.run["steps_done"] == len(losses) == 12
    assert losses == result.train_loss and record.run["first_loss"] == result.train_loss[0]
    assert record.optimizer["lr_at_steps"] == [result.lr[s - 1] for s in record.steps] and record.steps == [5, 10, 12]
    if weight_decay is None:
        assert record.run["weight_decay"] == 0.1


def test_snr_run_records_where_a_non_finite_loss_stopped_it():
    calls = []
    record = run_snr(build_task("gpt", "tiny", 0, **GPT), lr=1e30, schedule=Schedule.parse("every:2"),
                     callback=lambda s, v: calls.append(s))
    assert record.run["diverged_at"] == len(calls) + 1 and record.run["steps_done"] == len(calls) < 12


def test_pretraining_goes_through_the_loop(tmp_path, monkeypatch):
    real = _data.cache_dir()
    for p in real.iterdir():  # the data, but no cached checkpoint: this pre-trains
        if p.name != "checkpoints":
            (tmp_path / p.name).symlink_to(p)
    monkeypatch.setenv("SLIMBENCH_DATA", str(tmp_path))
    calls = []

    def spy(task, optimizer, **kw):
        out = train(task, optimizer, **kw)
        calls.append((kw, out))
        return out
    monkeypatch.setattr(_specs, "train", spy)
    task = build_task("finetune", "tiny", 0, steps=2, pretrain_steps=4)
    (kw, out), = calls
    assert kw["steps"] == 4 and kw["grad_clip"] == task.spec.grad_clip and "divergence_factor" not in kw
    assert out.steps_done == 4 and task.describe()["dataset"]["pretrain"]["checkpoint"]["initial_loss"] == out.train_loss[0]

    def blows_up(task, optimizer, **kw):
        return LoopResult(train_loss=[float("inf")], divergence={"step": 0, "loss": "inf", "reason": "loss is not finite"})
    monkeypatch.setattr(_specs, "train", blows_up)
    with pytest.raises(RuntimeError, match="pre-training diverged at step 0 .loss is not finite.; no checkpoint"):
        build_task("finetune", "tiny", 0, steps=2, pretrain_steps=5)
    assert len(list((tmp_path / "checkpoints").glob("*.pt"))) == 1


def test_the_loop_imports_only_torch_and_the_standard_library():
    """tasks/, snr/ and bench/ all import the loop, so it may import none of slimbench."""
    tree = ast.parse(Path(loop.__file__).read_text())
    roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    roots |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert roots - {"__future__", "torch"} <= sys.stdlib_module_names and "torch" in roots
