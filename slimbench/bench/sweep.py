"""Learning-rate sweeps: a grid of independent runs, resumable, on a local loop or a job system.

    sweep = SweepConfig(task="gpt", optimizers=("adamw", "slimadam"), lrs=(1e-3, 3e-3), seeds=(0, 1),
                        overrides={"steps": 500})
    report = run_sweep(sweep.runs(), "results/runs/gpt-lr")

A sweep is the list ``sweep.runs()`` (optimizer x lr x seed, in that order). Each run writes
``<out>/<run_id>.json`` atomically when it ends, and :func:`run_sweep` skips every run whose file is
already there, so rerunning the same sweep resumes it: a killed sweep loses at most the runs in flight.
A result file made with a different task version is an error, not a silent skip.

Executors (the local loop is the default):

* ``"local"``: one run after another in this process.
* ``"submitit"``: one job per pending run through ``submitit.AutoExecutor`` (Slurm, or local processes
  where there is no Slurm), if submitit is installed (``pip install -e '.[cluster]'``); ``executor_options``
  go to ``update_parameters`` (``timeout_min``, ``slurm_partition``, ``cpus_per_task``, ...), except
  ``cluster`` (AutoExecutor's own: ``"local"``, ``"slurm"``). Each job writes its own file, so the same
  resume rule holds. A run with ``fsdp=N`` is one job of N tasks (``tasks_per_node=N``, or N / ``nodes``
  per node when ``nodes`` is given): each task joins the job's process group from
  ``submitit.helpers.TorchDistributedEnvironment`` and trains the same run as a torchrun rank does; rank 0
  writes the file.
* any other job system: :func:`commands` gives one POSIX shell command per pending run, on one line
  (``<this python> -m slimbench run ... --threads N --out DIR`` for exactly that run, every argument
  ``shlex``-quoted, so any ``--out`` path is data, never code), to hand to a scheduler (``xargs -d '\n'``,
  a Slurm array). Running them all, in any order or place sharing ``DIR``, gives the same files as the
  local loop.

Before any training, :func:`preflight` builds each task once, resolves every optimizer's rules against its
model and checks that ``out`` is writable, so a bad rule or a read-only folder is one error, not one per
run. A result that cannot be written (a full disk) stops the sweep at once (:class:`ResultNotSaved`).
"""
from __future__ import annotations

import json
import shlex
import sys
import traceback
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from slimbench.bench import fsdp as _fsdp
from slimbench.bench import runner
from slimbench.bench.results import (DEFAULT_DIVERGENCE_FACTOR, RunConfig, RunResult, load_result, result_path,
                                     save_result)
from slimbench.io import probe_writable
from slimbench.registry import OptimizerUnavailable, build_optimizer
from slimbench.registry import get_spec as optimizer_spec
from slimbench.tasks import build_task, get_spec

EXECUTORS = ("local", "submitit")
# torch threads of `run` and `experiment` unless told: results depend on the count, and one thread was ~5x
# faster than two on a shared 2-core CPU (200 gpt steps: 6.3 s vs 33.7 s); every committed result used 1.
DEFAULT_THREADS = 1
# on_event(kind, config, payload): kind "start" (payload None), "step" (payload (step, loss)),
# "end" (payload RunOutcome).
EventCallback = Callable[[str, RunConfig, Any], None]


@dataclass(frozen=True)
class SweepConfig:
    """A grid: task (at a preset, with overrides) x optimizers x lrs x seeds, with one rule set."""

    task: str
    optimizers: tuple[str, ...]
    lrs: tuple[float, ...]
    seeds: tuple[int, ...] = (0,)
    preset: str = "tiny"
    rules: str | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    divergence_factor: float = DEFAULT_DIVERGENCE_FACTOR

    def __post_init__(self):
        for name in ("optimizers", "lrs", "seeds"):
            values = tuple(getattr(self, name))
            if not values:
                raise ValueError(f"{name} is empty")
            if len(set(values)) != len(values):
                raise ValueError(f"{name} repeats a value: {', '.join(map(str, values))}")
            object.__setattr__(self, name, values)
        get_spec(self.task, self.preset, **self.overrides)  # unknown task / preset / setting: fail now
        takes = [_takes_rules(o) for o in self.optimizers]  # unknown optimizer: fail now
        if self.rules is not None and not any(takes):
            raise ValueError(f"rules {self.rules!r} given, but none of {', '.join(self.optimizers)} takes rules")

    def runs(self) -> list[RunConfig]:
        """Every run of the grid, validated (a negative lr raises ValueError here, before anything runs).

        ``rules`` go to the optimizers that take rules (SlimAdam); the others run without, so one sweep
        compares SlimAdam under a rule set with its baselines.
        """
        return [RunConfig(task=self.task, optimizer=o, lr=lr, seed=s, preset=self.preset,
                          rules=_rules_for(o, self.rules), overrides=self.overrides,
                          divergence_factor=self.divergence_factor)
                for o in self.optimizers for lr in self.lrs for s in self.seeds]


def _rules_for(optimizer: str, rules: str | None) -> str | None:
    """The rules a run of ``optimizer`` actually uses: the sweep's, else the spec's default ("paper" for
    SlimAdam), so the result file names the rules that were in force."""
    spec = optimizer_spec(optimizer)
    if not spec.uses_rules:
        return None
    return rules if rules is not None else spec.default_rules


def _takes_rules(optimizer: str) -> bool:
    """Whether registry optimizer ``optimizer`` accepts rules; ValueError naming the known ones if unknown."""
    return optimizer_spec(optimizer).uses_rules


class ResultNotSaved(OSError):
    """A finished run's file could not be written (full disk, read-only folder): the sweep stops here,
    since every later run would be lost the same way. Finished files are kept; rerunning resumes."""


@dataclass
class RunOutcome:
    """What became of one run in a sweep."""

    config: RunConfig
    status: str  # "finished" | "diverged" | "done" (found on disk) | "unavailable" | "error"
    path: str | None = None
    message: str = ""  # one line
    result: RunResult | None = None
    detail: str = ""  # the traceback of an "error" run

    def to_dict(self) -> dict:
        return {"run_id": self.config.run_id, "config": self.config.to_dict(), "status": self.status,
                "path": self.path, "message": self.message,
                "summary": self.result.summary if self.result else None}


def split_done(runs: Sequence[RunConfig], out: str | Path) -> tuple[list[RunOutcome], list[RunConfig]]:
    """Runs whose result file exists in ``out`` (as outcomes "done", results loaded) and the pending rest.

    A result file that does not match its run (another task version, another config under the same
    name) raises ValueError: rerunning into that folder would mix incomparable numbers.
    """
    done, pending = [], []
    versions: dict[tuple[str, str], int] = {}
    for cfg in runs:
        path = result_path(out, cfg)
        if not path.exists():
            pending.append(cfg)
            continue
        result = load_result(path)
        if result.config != cfg:
            raise ValueError(f"{path} holds a different run ({result.config.to_dict()}); use another --out")
        key = (cfg.task, cfg.preset)
        if key not in versions:
            versions[key] = get_spec(cfg.task, cfg.preset).version
        if result.task.get("version") != versions[key]:
            raise ValueError(f"{path} was made by {cfg.task} version {result.task.get('version')}, this slimbench "
                             f"has version {versions[key]}; use another --out")
        done.append(RunOutcome(cfg, "done", str(path), result=result))
    return done, pending


def run_and_save(config: RunConfig, out: str | Path, *, optimizer_factory=None, on_step=None) -> RunOutcome:
    """Run ``config`` and write its result file; a missing third-party optimizer gives outcome
    "unavailable" (no file, so a later rerun tries again). Other exceptions propagate."""
    try:
        result = runner.run(config, optimizer_factory=optimizer_factory, on_step=on_step)
    except OptimizerUnavailable as e:
        return RunOutcome(config, "unavailable", message=str(e))
    try:
        path = save_result(result, out)
    except OSError as e:
        raise ResultNotSaved(f"cannot write the result of {config.run_id} into {out}: {e.strerror or e}; "
                             "the sweep stopped (finished runs are kept: rerun the same command to resume)") from e
    msg = "" if result.divergence is None else f"diverged at step {result.divergence['step']}: " \
                                                f"{result.divergence['reason']}"
    return RunOutcome(config, result.status, str(path), msg, result)


def _submitit_job(config_dict: dict, out: str, threads: int | None = None) -> dict:
    """What a submitit job runs (module-level so it pickles): one run, its file written by the job."""
    if threads is not None:
        torch.set_num_threads(threads)
    return _job_summary(run_and_save(RunConfig.from_dict(config_dict), out))


def _job_summary(outcome: RunOutcome) -> dict:
    """What a job hands back to the sweep (plain data: it crosses a pickle); the sweep reloads the file."""
    return {"status": outcome.status, "path": outcome.path, "message": outcome.message}


def _submitit_fsdp_job(config_dict: dict, out: str, threads: int | None = None) -> dict | None:
    """One task of a submitit job of ``fsdp`` tasks: join the job's process group (submitit's environment
    exported as torchrun's, MASTER_ADDR = the job's first node), then train the run as a torchrun rank
    does. Rank 0 writes the file and returns its outcome (``job.result()`` is task 0's); the others None."""
    from submitit.helpers import TorchDistributedEnvironment

    if threads is not None:
        torch.set_num_threads(threads)
    # overwrite: a job started from inside a torchrun or another job must not inherit its rank or port;
    # every GPU stays visible: the runner's process group picks cuda:LOCAL_RANK
    TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    config = RunConfig.from_dict(config_dict)
    world = _fsdp.init_from_env()
    ok = False
    try:
        if world != config.fsdp:
            raise ValueError(f"run {config.run_id} needs {config.fsdp} ranks, the job has {world} tasks")
        if _fsdp.rank() == 0:
            got: dict | None = _job_summary(run_and_save(config, out))
        else:
            runner.run(config)
            got = None
        ok = True
        return got
    finally:
        _fsdp.finish(ok)


def run_sweep(runs: Sequence[RunConfig], out: str | Path, *, executor: str = "local",
              executor_options: Mapping[str, Any] | None = None, optimizer_factory=None,
              on_event: EventCallback | None = None, keep_going: bool = True,
              threads: int | None = None) -> list[RunOutcome]:
    """Run every run of ``runs`` that has no result file in ``out`` yet; return one outcome per run.

    Args:
        runs: usually ``SweepConfig.runs()``.
        out: result folder (created).
        executor: "local" or "submitit" (see the module docstring).
        executor_options: submitit ``update_parameters`` keywords.
        optimizer_factory: stands in for the registry (local executor only).
        on_event: progress callback (see :data:`EventCallback`).
        keep_going: a run that raises records outcome "error" and the sweep goes on; False re-raises.
            KeyboardInterrupt always stops the sweep (finished files are kept).
        threads: torch threads of each submitit job (results depend on it; None: the job's default).
    """
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; use one of {', '.join(EXECUTORS)}")
    probe_writable(out)
    done, pending = split_done(runs, out)
    outcomes = {o.config.run_id: o for o in done}
    if executor == "submitit":
        if optimizer_factory is not None:
            raise ValueError("optimizer_factory works with the local executor only (jobs use the registry)")
        new = _run_submitit(pending, out, executor_options or {}, on_event, threads)
    else:
        new = _run_local(pending, out, optimizer_factory, on_event, keep_going)
    outcomes.update((o.config.run_id, o) for o in new)
    return [outcomes[cfg.run_id] for cfg in runs]


def preflight(runs: Sequence[RunConfig], *, optimizers: bool = True) -> None:
    """Build each distinct task once and, through the registry, each distinct (optimizer, rules, lr) on it,
    before any training.

    Missing data, a rule that matches nothing or names a dim a weight lacks, an optimizer that refuses its
    hyperparameters: one ValueError (or DataUnavailable) naming the run, instead of one failure per run.
    A missing third-party optimizer (outcome "unavailable") and any other failure are left to the run.
    ``optimizers=False`` builds the tasks only (a caller's own optimizer factory checks its own input).
    """
    tasks: dict[str, Any] = {}
    checked: set[tuple] = set()
    for cfg in runs:
        task_key = json.dumps([cfg.task, cfg.preset, cfg.overrides], sort_keys=True)
        if task_key not in tasks:
            tasks[task_key] = build_task(cfg.task, cfg.preset, cfg.seed, **cfg.overrides)
        task = tasks[task_key]
        key = (task_key, cfg.optimizer, cfg.rules, cfg.lr)
        if not optimizers or key in checked:
            continue
        checked.add(key)
        try:
            build_optimizer(cfg.optimizer, task.model, lr=cfg.lr, betas=task.spec.betas,
                            weight_decay=task.spec.weight_decay, rules=cfg.rules)
        except (ValueError, KeyError) as e:  # FormatError is a ValueError
            msg = e.args[0] if isinstance(e, KeyError) and e.args else e
            raise ValueError(f"{cfg.optimizer} (lr {cfg.lr:g}, rules {cfg.rules!r}) on {cfg.task}/{cfg.preset}: "
                             f"{msg}") from None
        except Exception:  # noqa: BLE001 - unavailable or broken: the run itself reports it
            continue


def _run_local(pending, out, optimizer_factory, on_event, keep_going) -> list[RunOutcome]:
    preflight(pending, optimizers=optimizer_factory is None)
    on_step = (lambda cfg, step, loss: on_event("step", cfg, (step, loss))) if on_event else None
    outcomes = []
    for cfg in pending:
        if on_event:
            on_event("start", cfg, None)
        try:
            outcome = run_and_save(cfg, out, optimizer_factory=optimizer_factory, on_step=on_step)
        except ResultNotSaved:
            raise
        except Exception as e:  # noqa: BLE001 - one broken run must not end a long sweep; it is reported
            if not keep_going:
                raise
            outcome = RunOutcome(cfg, "error", message=_one_line(f"{type(e).__name__}: {e}"),
                                 detail=traceback.format_exc())
        outcomes.append(outcome)
        if on_event:
            on_event("end", cfg, outcome)
    return outcomes


def require_submitit() -> Any:
    """The submitit module, or a one-line ValueError saying how to install it."""
    try:
        import submitit
    except ImportError:
        raise ValueError("executor 'submitit' needs the submitit package (`pip install -e '.[cluster]'` or "
                         "`pip install submitit`); without it, use the local executor or `--print-commands` "
                         "to feed your own scheduler") from None
    return submitit


def _run_submitit(pending, out, options, on_event, threads=None) -> list[RunOutcome]:
    submitit = require_submitit()
    options = dict(options)
    cluster = options.pop("cluster", None)
    ex = submitit.AutoExecutor(folder=str(Path(out) / ".submitit"), **({"cluster": cluster} if cluster else {}))
    if options:
        ex.update_parameters(**options)
    jobs = []
    for cfg in pending:
        if cfg.fsdp:  # one job of fsdp tasks; set per job, since runs of one sweep may differ
            ex.update_parameters(tasks_per_node=_tasks_per_node(cfg.fsdp, options))
            jobs.append((cfg, ex.submit(_submitit_fsdp_job, cfg.to_dict(), str(out), threads)))
        else:
            if "tasks_per_node" not in options:
                ex.update_parameters(tasks_per_node=1)
            jobs.append((cfg, ex.submit(_submitit_job, cfg.to_dict(), str(out), threads)))
    outcomes = []
    for cfg, job in jobs:
        if on_event:
            on_event("start", cfg, None)
        try:
            got = job.results()[0] if cfg.fsdp else job.result()  # a job of tasks: task 0 (rank 0) wrote the file
            outcome = RunOutcome(cfg, got["status"], got["path"], got["message"],
                                 load_result(got["path"]) if got["path"] else None)
        except Exception as e:  # noqa: BLE001 - a failed job is reported, the others are still collected
            outcome = RunOutcome(cfg, "error", message=_one_line(f"job {getattr(job, 'job_id', '?')}: "
                                                                 f"{type(e).__name__}: {e}"), detail=str(e))
        outcomes.append(outcome)
        if on_event:
            on_event("end", cfg, outcome)
    return outcomes


def _tasks_per_node(world: int, options: Mapping[str, Any]) -> int:
    """Tasks per node of a job for a run over ``world`` ranks: all on one node, or ``world / nodes``."""
    nodes = options.get("nodes", 1)
    if not isinstance(nodes, int) or nodes < 1 or world % nodes:
        raise ValueError(f"a run with fsdp={world} cannot spread over nodes={nodes!r}: nodes must divide the world size")
    given = options.get("tasks_per_node")
    if given is not None and given != world // nodes:
        raise ValueError(f"tasks_per_node={given!r} contradicts fsdp={world} over {nodes} node(s) "
                         f"({world // nodes} per node); leave tasks_per_node out")
    return world // nodes


def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


def commands(runs: Sequence[RunConfig], out: str | Path, *, threads: int, python: str | None = None) -> list[str]:
    """One POSIX shell command per run, one per line: ``python -m slimbench run`` for that run alone; a run
    with ``fsdp=N`` becomes ``python -m torch.distributed.run --standalone --nproc_per_node N -m slimbench
    run ... --fsdp N`` (torchrun on a free local port, so such lines can run side by side).

    Every argument is ``shlex``-quoted, so ``sh -c LINE`` (what ``xargs -d '\n' -I{} sh -c {}`` runs) sees
    ``out``, rules paths and overrides as data whatever they contain. ``threads`` is pinned because results
    depend on it; ``python`` defaults to the running interpreter. A newline in any argument would split a
    command across lines, so it is refused (ValueError).
    """
    _check_threads(threads)  # even for no runs: a bad value is a bad call
    return [_command(cfg.task, cfg.preset, (cfg.optimizer,), (cfg.lr,), (cfg.seed,), cfg.rules, cfg.overrides,
                     cfg.divergence_factor, out, threads, python, fsdp=cfg.fsdp) for cfg in runs]


def sweep_command(sweep: SweepConfig, out: str | Path, *, threads: int, python: str | None = None) -> str:
    """The one ``python -m slimbench run`` command that runs all of ``sweep`` into ``out``: the same
    arguments as :func:`commands` (so both name the same result files), for a whole grid."""
    return _command(sweep.task, sweep.preset, sweep.optimizers, sweep.lrs, sweep.seeds, sweep.rules,
                    sweep.overrides, sweep.divergence_factor, out, threads, python)


def _command(task: str, preset: str, optimizers: Sequence[str], lrs: Sequence[float], seeds: Sequence[int],
             rules: str | None, overrides: Mapping[str, Any], divergence_factor: float, out: str | Path,
             threads: int, python: str | None, fsdp: int = 0) -> str:
    """The shell-quoted ``run`` command line that rebuilds exactly these run configs (hence run ids);
    under torchrun with ``fsdp`` processes when ``fsdp`` is set."""
    _check_threads(threads)
    launch = [python or sys.executable]
    if fsdp:
        launch += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(fsdp)]
    args = [*launch, "-m", "slimbench", "run", "--task", task, "--preset", preset,
            "--optimizers", ",".join(optimizers), "--lrs", ",".join(repr(float(lr)) for lr in lrs),
            "--seeds", ",".join(map(str, seeds)), "--out", str(out), "--threads", str(threads), "--no-progress"]
    if rules is not None:
        args += ["--rules", str(rules)]
    if divergence_factor != DEFAULT_DIVERGENCE_FACTOR:
        args += ["--divergence-factor", repr(divergence_factor)]
    for key, value in sorted(overrides.items()):
        args += ["--set", f"{key}={_json(value)}"]
    if fsdp:
        args += ["--fsdp", str(fsdp)]
    bad = next((a for a in args if "\n" in a or "\r" in a or "\0" in a), None)
    if bad is not None:
        raise ValueError(f"{bad!r} holds a line break or NUL; one-command-per-line output cannot carry it "
                         "(use another --out / rules path)")
    return shlex.join(args)


def _check_threads(threads: Any) -> None:
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"threads must be an int >= 1, got {threads!r}")


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


# ---------------------------------------------------------------------------------------------------------
# Summaries (data; the CLI renders them)


def summary_rows(outcomes: Sequence[RunOutcome]) -> list[dict]:
    """One row per run: optimizer, lr, seed, status, losses, state bytes, step time."""
    rows = []
    for o in outcomes:
        s = o.result.summary if o.result else {}
        rows.append({"optimizer": o.config.optimizer, "lr": o.config.lr, "seed": o.config.seed, "status": o.status,
                     "steps": s.get("steps_done"), "initial_loss": s.get("initial_loss"),
                     "final_train_loss": s.get("final_train_loss"), "final_val_loss": s.get("final_val_loss"),
                     "state_bytes": s.get("state_bytes"), "median_step_time_s": s.get("median_step_time_s"),
                     "wall_time_s": s.get("wall_time_s"), "message": o.message.splitlines()[0] if o.message else ""})
    return rows


def best_lrs(outcomes: Sequence[RunOutcome]) -> list[dict]:
    """Per optimizer: the lr with the lowest mean final validation loss over seeds (a diverged seed
    disqualifies its lr), that loss, and the lrs where some seed diverged."""
    by_opt: dict[str, dict[float, list]] = defaultdict(lambda: defaultdict(list))
    for o in outcomes:
        if o.result is not None:
            by_opt[o.config.optimizer][o.config.lr].append(o.result.summary["final_val_loss"])
    rows = []
    for opt, per_lr in by_opt.items():
        ok = {lr: sum(v) / len(v) for lr, v in per_lr.items() if all(x is not None for x in v)}
        best = min(ok, key=ok.get) if ok else None
        rows.append({"optimizer": opt, "best_lr": best, "final_val_loss": ok.get(best),
                     "seeds": len(per_lr[best]) if best is not None else 0,
                     "diverged_lrs": sorted(lr for lr in per_lr if lr not in ok)})
    return rows
