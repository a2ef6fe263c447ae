"""`python -m slimbench snr --task TASK --lr LR --steps N --out snr.json`: train with Adam(W), record SNR.

Prints a summary per layer type: the SNR of each candidate K averaged over steps and layers, and the K
the rules step would choose at ``--cutoff``. Turn the record into rules with ``python -m slimbench rules``.

``--model MODEL`` (a preset, hf:<model_type> or package.module:factory) trains that model instead of the
task's own, on the task's data and recipe (``--task`` gpt by default, or linear-lm): next-token prediction
on character-level Shakespeare (under 100 token ids), so the model must be a causal LM whose vocabulary
covers the task's. ``--set`` then sets the model, ``--task-set`` the recipe (batch_size, block_size...):

    python -m slimbench snr --model hf:gpt2 --set n_layer=2 --set n_embd=128 --set n_head=4 --steps 200 --out snr.json
"""
from __future__ import annotations

import argparse
import math

from tabulate import tabulate

from slimbench.modelspec import add_model_arguments, lm_task, parse_sets, resolve_model
from slimbench.snr.derive import ROLES, derive_rules
from slimbench.snr.record import SNRRecord
from slimbench.snr.run import OPTIMIZERS, run_snr
from slimbench.snr.tracker import Schedule


def build_task(name: str, preset: str, seed: int, **overrides):
    """The standard task (imported here so the snr library never depends on the tasks package).

    A ``steps`` override shorter than the preset's keeps the preset's warmup fraction unless
    ``warmup_steps`` is given too (:func:`slimbench.tasks.get_spec`): a short proxy run keeps the recipe's shape.
    """
    from slimbench.tasks import build_task as _build

    return _build(name, preset=preset, seed=seed, **overrides)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("snr", help="train a task with Adam(W) and record the SNR of its second moments",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--task", help="task name (gpt, linear-lm, vit, cnn, finetune, digits); with --model the "
                                   "data and recipe (gpt or linear-lm, default gpt)")
    add_model_arguments(p, None, with_set=False)
    p.add_argument("--preset", default="tiny", help="task size preset (default: tiny)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, help="peak learning rate (default: the task's)")
    p.add_argument("--steps", type=int, help="training steps (default: the task's)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a task or model setting, e.g. --set n_layer=4 (repeatable; JSON values, else "
                        "strings); with --model, a setting of that model")
    p.add_argument("--task-set", action="append", metavar="KEY=VALUE",
                   help="with --model: override a recipe setting of the task, e.g. batch_size=8 (repeatable)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw")
    p.add_argument("--schedule", default="default",
                   help="when to measure: 'default' (every 100 steps to 1000, then every 1000), 'every:N' "
                        "or 'EVERY/UNTIL/THEN'")
    p.add_argument("--cutoff", type=float, default=1.0, help="SNR cutoff for the summary's chosen K (default 1.0)")
    p.add_argument("--out", required=True, help="SNR record to write (JSON)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def fmt_snr(v: float | None) -> str:
    """SNR for a table: 3 significant digits, 'inf' for a constant V, '-' when not a candidate."""
    if v is None:
        return "-"
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf"
    return f"{v:.3g}"


def type_summary(record: SNRRecord, cutoff: float, skip_steps: int = 0) -> tuple[list[list], list[str]]:
    """Rows per layer type: layers, mean SNR per role, the chosen K at the cutoff, V saved."""
    d = derive_rules(record, cutoff, depth_average=True, skip_steps=skip_steps)
    rows = []
    by_name = {r.name: r for r in d.rows}
    for t in d.types:
        members = [by_name[n] for n in t.layers]
        numel = sum(r.numel for r in members)
        saved = sum(r.saved for r in members)
        rows.append([t.layer_type, len(t.layers), *(fmt_snr(t.snr.get(r)) for r in ROLES), t.choice or "none",
                     f"{100 * saved / numel:.1f}%" if numel else "-"])
    headers = ["layer type", "layers", "SNR fan_out K=(0,)", "SNR fan_in K=(1..)", "SNR both K=all",
               f"K at cutoff {cutoff:g}", "V saved"]
    return rows, headers


def run(args: argparse.Namespace) -> int:
    schedule = Schedule.parse(args.schedule)
    steps = {}
    if args.steps is not None:
        if args.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {args.steps}")
        steps["steps"] = args.steps
    if args.model:
        task_name = args.task or "gpt"
        mspec = resolve_model(args.model, parse_sets(args.set))
        task = lm_task(mspec, task_name, args.preset, args.seed, **parse_sets(args.task_set, "--task-set"), **steps)
        label = f"{mspec.name} on {task_name}/{args.preset}"
    else:
        if not args.task:
            raise ValueError("give --task TASK (a built-in task) or --model MODEL (your model on the gpt task's data)")
        if args.task_set:
            raise ValueError("--task-set goes with --model; without --model, --set sets the task")
        task = build_task(args.task, args.preset, args.seed, **{**parse_sets(args.set), **steps})
        label = f"{args.task}/{args.preset}"

    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=task.spec.steps, desc=f"snr {label}", unit="step", leave=False)

    def progress(step: int, loss: float) -> None:
        if bar is not None:
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{loss:.3f}")

    try:
        record = run_snr(task, lr=args.lr, schedule=schedule, optimizer=args.optimizer, callback=progress)
    finally:
        if bar is not None:
            bar.close()
    path = record.save(args.out)
    info = record.run
    ov = record.overhead
    print(f"{label} seed {args.seed}: {info['optimizer']} lr {info['lr']:g}, "
          f"{info['steps_done']} steps, loss {info['first_loss']:.3f} -> {info['last_loss']:.3f}"
          + (f"  DIVERGED at step {info['diverged_at']}" if info.get("diverged_at") else ""))
    frac = ov.get("fraction")
    print(f"SNR measured at {len(record.steps)} steps ({', '.join(map(str, record.steps[:8]))}"
          f"{', ...' if len(record.steps) > 8 else ''}); tracker overhead "
          + (f"{100 * frac:.2f}% of the step time" if frac is not None else "n/a"))
    if record.skipped:
        for name, why in record.skipped.items():
            print(f"skipped {name}: {why}")
    if record.tracked and record.steps:
        rows, headers = type_summary(record, args.cutoff)
        print(tabulate(rows, headers=headers, disable_numparse=True))
    print(f"wrote {path}")
    return 0
