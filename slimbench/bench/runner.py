"""One training run: task x optimizer x lr x seed (+ rules), measured step by step.

    from slimbench.bench.runner import run
    from slimbench.bench.results import RunConfig
    result = run(RunConfig(task="gpt", optimizer="slimadam", lr=1e-3, seed=0, rules="paper"))

The loop is :func:`slimbench.loop.train`, the one that SNR runs and fine-tune pre-training use too. Per step
(0-based):
    loss = task.loss(model, task.train_batch(step))
    stop if loss is not finite or loss > divergence_factor x (loss at step 0)   -> status "diverged"
    (an optimizer step that overflows, e.g. at lr=1e300, is a divergence at that step too)
    backward; clip the global grad norm to spec.grad_clip (1.0); optimizer.step(); scheduler.step()
Schedule: ``LambdaLR(optimizer, spec.lr_factor)``: linear warmup, then cosine from lr to lr/10
(:meth:`slimbench.tasks.TaskSpec.lr_factor`). Betas and weight decay are the task's defaults (language
models: (0.9, 0.95), 0.1); the optimizer decides how weight decay is grouped. This module adds the
bookkeeping through the loop's hooks: validation, the ledger after step 0, progress, FSDP, the result.

Recorded: the training loss, grad norm, lr and wall time of every step (batch + forward + backward +
step; validation excluded), the validation loss at step 0, every ``eval_every`` steps and at the end,
the optimizer-state ledger after the first step, ``task.describe()`` and the environment.
A run is deterministic given (config, torch thread count): the model comes from the seed, batch ``step``
from (seed, step), and nothing else draws random numbers.

``config.fsdp = N`` trains the model sharded by FSDP2 over the N ranks of the current process group
(:mod:`slimbench.bench.fsdp`; every rank runs this same loop on the same batches). The ledger is rank 0's
local shards, ``memory["per_rank_state_bytes"]`` every rank's, and ``env`` records the world size.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone

import torch
from torch import nn

from slimbench.bench import fsdp as _fsdp
from slimbench.bench.results import RunConfig, RunResult
from slimbench.env import provenance
from slimbench.loop import train
from slimbench.memory.ledger import optimizer_ledger
from slimbench.registry import build_optimizer
from slimbench.tasks import TaskSpec, build_task

# build_optimizer's signature (slimbench.registry): (name, model, lr, betas, weight_decay, rules) -> Optimizer
OptimizerFactory = Callable[..., torch.optim.Optimizer]
# Called after every step: (config, step, loss); loss is a float (maybe not finite on the last call).
StepCallback = Callable[[RunConfig, int, float], None]


def state_ledger(optimizer: torch.optim.Optimizer, model: nn.Module) -> dict:
    """The optimizer's state ledger (totals and one entry per state tensor, named by ``model``)."""
    return optimizer_ledger(optimizer, model).to_dict()


def _build_optimizer(config: RunConfig, model: nn.Module, spec: TaskSpec,
                     factory: OptimizerFactory) -> torch.optim.Optimizer:
    try:
        return factory(config.optimizer, model, lr=config.lr, betas=spec.betas, weight_decay=spec.weight_decay,
                       rules=config.rules)
    except KeyError as e:  # an unknown name, however the factory spells it
        raise ValueError(f"unknown optimizer {config.optimizer!r} ({e.args[0] if e.args else e})") from None


def run(config: RunConfig, *, optimizer_factory: OptimizerFactory | None = None,
        ledger_fn: Callable[[torch.optim.Optimizer, nn.Module], dict] | None = None,
        on_step: StepCallback | None = None) -> RunResult:
    """Train ``config.task`` with ``config.optimizer`` at ``config.lr``; return what was measured.

    Args:
        config: the run.
        optimizer_factory: stands in for ``slimbench.registry.build_optimizer`` (same signature).
        ledger_fn: stands in for the state ledger (default :func:`state_ledger`).
        on_step: progress callback after every step.

    Raises ValueError for an unknown task, preset, setting or optimizer, ``OptimizerUnavailable`` (from
    the registry) for a missing third-party optimizer, and DataUnavailable for missing data.
    """
    started_at = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    t_start = time.perf_counter()
    task = build_task(config.task, config.preset, config.seed, **config.overrides)
    spec, model = task.spec, task.model
    if config.fsdp:
        _fsdp.shard(model, config.fsdp)
    optimizer = _build_optimizer(config, model, spec, optimizer_factory or build_optimizer)
    val = [{"step": 0, "loss": task.eval_loss(model)}]
    memory: dict = {}

    def validate(step: int) -> None:
        if step and step % spec.eval_every == 0:
            val.append({"step": step, "loss": task.eval_loss(model)})

    def after_step(step: int, value: float) -> None:
        nonlocal memory
        if step == 0:
            memory = (ledger_fn or state_ledger)(optimizer, model)
            if config.fsdp:
                memory["per_rank_state_bytes"] = _fsdp.gather_ints(memory.get("state_bytes", 0))
        if on_step:
            on_step(config, step, value)

    out = train(task, optimizer, steps=spec.steps, lr_factor=spec.lr_factor, grad_clip=spec.grad_clip,
                divergence_factor=config.divergence_factor, overflow_is_divergence=True, before_step=validate,
                after_step=after_step, on_stop=(lambda step, value: on_step(config, step, value)) if on_step else None,
                scalar=_fsdp.full_value)
    if out.divergence is None:
        val.append({"step": spec.steps, "loss": task.eval_loss(model)})

    optimizer_info = {"name": config.optimizer, "class": f"{type(optimizer).__module__}.{type(optimizer).__qualname__}",
                      "lr": config.lr, "betas": list(spec.betas), "weight_decay": spec.weight_decay,
                      "rules": config.rules, "rules_fingerprint": config.rules_fingerprint()}
    env = {**provenance(), "seed": config.seed, "dtype": str(next(model.parameters()).dtype).replace("torch.", "")}
    if config.fsdp:
        env.update(world_size=config.fsdp, fsdp=True, backend=str(torch.distributed.get_backend()))
    return RunResult(config=config, status="diverged" if out.divergence else "finished", train_loss=out.train_loss,
                     val=val, grad_norm=out.grad_norm, lr=out.lr, step_time_s=out.step_time_s, memory=memory,
                     optimizer=optimizer_info, task=task.describe(), env=env,
                     wall_time_s=time.perf_counter() - t_start, started_at=started_at, divergence=out.divergence)
