"""`python -m slimbench run`: a learning-rate sweep (or one run) of a standard task, resumable.

Examples:
    python -m slimbench run --task gpt --optimizers adamw,slimadam,adalayer,adam-mini \\
        --lrs 3e-4,1e-3,3e-3,1e-2 --seeds 0,1 --steps 500 --out results/runs/gpt-tiny-lr
    python -m slimbench run --task gpt --preset small --optimizers slimadam --rules paper --out results/runs/x
    python -m slimbench run ... --print-commands | xargs -d '\n' -P 2 -I{} sh -c {}
    python -m slimbench run ... --commands-file jobs.txt     # then one job per line (e.g. a Slurm array)
    python -m slimbench run --list-tasks
    torchrun --nproc_per_node 2 -m slimbench run --task gpt --optimizers slimadam --fsdp   # sharded (FSDP2)
    python -m slimbench run --task gpt --optimizers slimadam --fsdp 2 --executor submitit  # one job, 2 tasks

Rerunning the same command skips runs whose result file exists; Ctrl-C keeps every finished run.
Printed commands are one per line, every argument shell-quoted (any --out path is safe), and carry the
running interpreter and --threads (default 1, as `experiment`), since results depend on it.
Exit codes: 0 every run finished or diverged, 1 some run failed (one line each; --fail-fast for the
traceback), 2 bad input or a result that could not be written.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

import torch
from tabulate import tabulate

from slimbench.bench import fsdp as _fsdp
from slimbench.bench import runner as _runner
from slimbench.bench import sweep as _sweep
from slimbench.io import write_atomic
from slimbench.modelspec import parse_value
from slimbench.tasks import TASKS, get_spec


def _csv(kind):
    def parse(text: str):
        try:
            values = tuple(kind(x.strip()) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}") from None
        if not values:  # `--lrs ,` must not silently fall back to the default
            raise argparse.ArgumentTypeError(f"expected at least one {kind.__name__}, got {text!r}")
        return values
    return parse


def _key_value(text: str) -> tuple[str, object]:
    """One KEY=VALUE, its value read by the one ``--set`` grammar (slimbench.modelspec.parse_value)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), parse_value(raw.strip())


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("run", help="train a task with optimizers x lrs x seeds (a resumable sweep)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", help=f"one of: {', '.join(TASKS)}")
    p.add_argument("--preset", default="tiny", help="task size preset: tiny (CI) or small (default: tiny)")
    p.add_argument("--optimizers", type=_csv(str), default=("adamw",), metavar="A,B",
                   help="registry names, comma-separated (default: adamw)")
    p.add_argument("--lrs", type=_csv(float), metavar="LR,LR", help="peak learning rates (default: the task's)")
    p.add_argument("--seeds", type=_csv(int), default=(0,), metavar="S,S", help="seeds (default: 0)")
    p.add_argument("--steps", type=int, help="training steps (default: the preset's)")
    p.add_argument("--set", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="override a task or model setting, e.g. --set n_layer=4 --set init=torch (JSON values)")
    p.add_argument("--rules", help="SlimAdam rules: 'paper', 'none' or a rules file (default: 'paper', the one default of "
                   "SlimAdam, the registry and every subcommand; other optimizers take no rules)")
    p.add_argument("--divergence-factor", type=float, default=_sweep.DEFAULT_DIVERGENCE_FACTOR,
                   help="end a run when its loss exceeds this x its first loss (default: %(default)s)")
    p.add_argument("--out", help="result folder, one JSON per run (default: results/runs/TASK-PRESET)")
    p.add_argument("--threads", type=int, default=_sweep.DEFAULT_THREADS,
                   help="torch threads (default %(default)s, as `experiment`); results depend on it")
    p.add_argument("--executor", choices=_sweep.EXECUTORS, default="local",
                   help="local loop (default) or submitit jobs (needs `pip install -e '.[cluster]'`); with --fsdp N "
                   "one job of N tasks per run")
    p.add_argument("--executor-opt", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="submitit update_parameters, e.g. timeout_min=60 slurm_partition=cpu nodes=2; "
                   "cluster=local|slurm picks the executor")
    p.add_argument("--print-commands", action="store_true",
                   help="print one shell command per pending run, one per line (for a scheduler) and exit")
    p.add_argument("--commands-file", metavar="FILE",
                   help="write those commands to FILE (atomically) instead of printing them, and exit")
    p.add_argument("--fsdp", type=_world_size, nargs="?", const=0, default=None, metavar="N",
                   help="train sharded by FSDP2 over torchrun's ranks (gloo on CPU, NCCL on GPU; N, if given, must "
                   "be torchrun's world size); rank 0 writes the results, whose run id and config record the world "
                   "size. With --print-commands / --commands-file: N is required, one torchrun line per run; "
                   "with --executor submitit: N is required, one job of N tasks per run")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first run that raises")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--list-tasks", action="store_true", help="list tasks and presets and exit")
    p.set_defaults(func=run)


def _world_size(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"--fsdp takes a world size (an int >= 1), got {text!r}")
    return n


def _list_tasks() -> int:
    rows = []
    for name, tdef in TASKS.items():
        for preset, spec in tdef.presets.items():
            rows.append([name, preset, spec.dataset, spec.steps, spec.batch_size, spec.lr,
                         ", ".join(f"{k}={v}" for k, v in spec.model.items()), tdef.description])
    print(tabulate(rows, headers=["task", "preset", "dataset", "steps", "batch", "lr", "model", "description"]))
    return 0


def _fmt(x, spec=".4f"):
    return "-" if x is None else format(x, spec)


def _follow(runs: list, out: str) -> int:
    """Ranks > 0 of an --fsdp sweep: train the same pending runs in step with rank 0, which writes the files
    and prints the summary; a run failing here is reported on stderr with the rank."""
    _, pending = _sweep.split_done(runs, out)  # before rank 0 can write any (its first run needs this rank)
    failed = 0
    for cfg in pending:
        try:
            _runner.run(cfg)
        except Exception as e:  # noqa: BLE001 - reported; rank 0 reports its own view of the same run
            failed += 1
            print(f"rank {_fsdp.rank()}: run failed: {cfg.run_id}: {type(e).__name__}: {e}", file=sys.stderr)
    return 1 if failed else 0


def run(args: argparse.Namespace) -> int:
    if args.list_tasks:
        return _list_tasks()
    if not args.task:
        raise ValueError("--task is required (see --list-tasks)")
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    overrides = dict(args.set)
    if args.steps is not None:
        overrides["steps"] = args.steps
    lrs = args.lrs or (get_spec(args.task, args.preset, **overrides).lr,)
    config = _sweep.SweepConfig(task=args.task, optimizers=args.optimizers, lrs=lrs, seeds=args.seeds,
                                preset=args.preset, rules=args.rules, overrides=overrides,
                                divergence_factor=args.divergence_factor)
    out = args.out or f"results/runs/{args.task}-{args.preset}"
    runs = config.runs()

    def runs_of(world: int) -> list:
        return [dataclasses.replace(c, fsdp=world) for c in runs]

    if args.fsdp is not None and (args.print_commands or args.commands_file):
        if not args.fsdp:
            raise ValueError("--fsdp with --print-commands / --commands-file needs the world size: --fsdp N "
                             "(one torchrun --nproc_per_node N line per run)")
        return _sweep_and_report(args, runs_of(args.fsdp), out)
    if args.fsdp is not None and args.executor == "submitit":
        if not args.fsdp:
            raise ValueError("--fsdp with --executor submitit needs the world size: --fsdp N "
                             "(one job of N tasks per run)")
        return _sweep_and_report(args, runs_of(args.fsdp), out)
    if args.fsdp is not None:
        world = _fsdp.init_from_env()
        if args.fsdp and args.fsdp != world:
            _fsdp.finish(False)
            raise ValueError(f"--fsdp {args.fsdp} but torchrun started {world} processes (--nproc_per_node)")
        ok = False
        try:
            rc = _follow(runs_of(world), out) if _fsdp.rank() != 0 else _sweep_and_report(args, runs_of(world), out)
            ok = True
            return rc
        finally:
            _fsdp.finish(ok)
    return _sweep_and_report(args, runs, out)


def _sweep_and_report(args: argparse.Namespace, runs: list, out: str) -> int:
    """Run (or print the commands of) the pending runs of ``runs`` into ``out``; print the summary."""
    done, pending = _sweep.split_done(runs, out)
    if args.print_commands or args.commands_file:
        lines = _sweep.commands(pending, out, threads=torch.get_num_threads())
        if args.commands_file:
            write_atomic(args.commands_file, "".join(f"{line}\n" for line in lines))
        else:
            for line in lines:
                print(line)
        print(f"{len(lines)} commands for the pending runs ({len(done)} of {len(runs)} already done)"
              + (f" -> {args.commands_file}" if args.commands_file else ""), file=sys.stderr)
        return 0

    if args.executor == "submitit":
        _sweep.require_submitit()  # before the summary line: a missing package is the only line
    print(f"{len(runs)} runs -> {out}: {len(done)} already done, {len(pending)} to run", file=sys.stderr)
    steps = get_spec(args.task, args.preset, **dict(runs[0].overrides)).steps if runs else 0
    bar = None
    if pending and not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=steps * len(pending), unit="step", dynamic_ncols=True, file=sys.stderr)

    def on_event(kind, cfg, payload):
        if bar is None:
            return
        if kind == "start":
            bar.set_description(f"{cfg.optimizer} lr={cfg.lr:g} seed={cfg.seed}")
        elif kind == "step":
            bar.update(1)
        elif kind == "end":  # a diverged / failed run ends early: count its remaining steps as done
            ran = payload.result.summary["steps_done"] + (payload.status == "diverged") if payload.result else 0
            bar.update(max(0, steps - ran))

    try:
        outcomes = _sweep.run_sweep(runs, out, executor=args.executor, executor_options=dict(args.executor_opt),
                                    on_event=on_event, keep_going=not args.fail_fast, threads=args.threads)
    finally:
        if bar is not None:
            bar.close()

    rows = _sweep.summary_rows(outcomes)
    print(tabulate([[r["optimizer"], f"{r['lr']:g}", r["seed"], r["status"], _fmt(r["steps"], "d"),
                     _fmt(r["initial_loss"]), _fmt(r["final_train_loss"]), _fmt(r["final_val_loss"]),
                     _fmt(None if r["state_bytes"] is None else r["state_bytes"] / 2**20, ".3f"),
                     _fmt(None if r["median_step_time_s"] is None else 1e3 * r["median_step_time_s"], ".1f"),
                     _fmt(r["wall_time_s"], ".1f"), r["message"][:60]] for r in rows],
                   headers=["optimizer", "lr", "seed", "status", "steps", "loss@0", "train", "val", "state MiB",
                            "ms/step", "wall s", "note"]))
    best = _sweep.best_lrs(outcomes)
    if best:
        print()
        print(tabulate([[b["optimizer"], _fmt(b["best_lr"], "g"), _fmt(b["final_val_loss"]), b["seeds"],
                         ", ".join(f"{x:g}" for x in b["diverged_lrs"]) or "-"] for b in best],
                       headers=["optimizer", "best lr", "val (mean over seeds)", "seeds", "diverged at lr"]))
    errors = [o for o in outcomes if o.status == "error"]
    for o in errors:
        print(f"run failed: {o.config.run_id}: {o.message}", file=sys.stderr)
    if errors:
        print(f"{len(errors)} of {len(runs)} runs failed (no file written, a rerun retries them); "
              "--fail-fast stops at the first with its traceback", file=sys.stderr)
    return 1 if errors else 0
