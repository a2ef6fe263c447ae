"""`python -m slimbench experiment NAME [--quick] [--out DIR]`: run one of the paper's experiments.

Examples:
    python -m slimbench experiment --list
    python -m slimbench experiment snr-by-layer --quick          # CI size, < 1 min
    python -m slimbench experiment headline                      # full size -> results/experiments/headline
    python -m slimbench experiment headline --analyze-only       # tables from the files that exist

Each experiment is a recipe over the snr, rules and run commands (slimbench.experiments); rerunning skips
steps whose files exist. Outputs: summary.json, tables.md and PNG plots in the experiment's folder.
"""
from __future__ import annotations

import argparse
import sys
import time

from tabulate import tabulate

from slimbench.bench.sweep import DEFAULT_THREADS
from slimbench.experiments import EXPERIMENTS, get_experiment, plan, run_experiment


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("experiment", help="run one of the paper's experiments (snr, rules, sweeps, tables)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", nargs="?", metavar="NAME", help=f"one of: {', '.join(EXPERIMENTS)}")
    p.add_argument("--list", action="store_true", help="list the experiments and exit")
    p.add_argument("--quick", action="store_true", help="tiny sizes and steps (CI)")
    p.add_argument("--out", help="output folder (default results/experiments/NAME, or NAME-quick)")
    p.add_argument("--analyze-only", action="store_true", help="compute nothing; tables from existing files")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                   help="torch threads while computing (default %(default)s, as `run`: fastest on shared CPUs, "
                        "deterministic)")
    p.add_argument("--plan", action="store_true",
                   help="print the steps as the commands that make the same files (sweeps resume) and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.list:
        print(tabulate([[e.name, e.title, len(e.plan(False)), len(e.plan(True))] for e in EXPERIMENTS.values()],
                       headers=["name", "what", "steps (full)", "steps (quick)"]))
        return 0
    if not args.name:
        raise ValueError("give an experiment NAME (see --list)")
    exp = get_experiment(args.name)
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.plan:
        for line in plan(exp.name, quick=args.quick, out=args.out, threads=args.threads):
            print(line)
        return 0

    started: dict[str, float] = {}

    def on_step(step, phase):
        if phase == "start":
            started[step.key] = time.perf_counter()
            print(f"[{time.strftime('%H:%M:%S')}] {type(step).__name__} {step.key} ...", file=sys.stderr, flush=True)
        else:
            print(f"[{time.strftime('%H:%M:%S')}]   done in {time.perf_counter() - started[step.key]:.1f} s",
                  file=sys.stderr, flush=True)

    def on_event(kind, cfg, payload):
        if kind == "end":
            print(f"    {cfg.optimizer} lr={cfg.lr:g} seed={cfg.seed}: {payload.status}"
                  + (f" ({payload.message.splitlines()[0][:80]})" if payload.message else ""),
                  file=sys.stderr, flush=True)

    result = run_experiment(exp.name, quick=args.quick, out=args.out, analyze_only=args.analyze_only,
                            threads=args.threads, on_step=on_step, on_event=on_event)
    # imported here: it loads matplotlib, which the other commands skip
    from slimbench.report.markdown import render_table

    print(f"# {exp.title}" + (" (quick)" if args.quick else ""))
    print(f"paper: {exp.claim}")
    for t in result.analysis.tables:
        print()
        print(t.title)
        if t.note:
            print(t.note)
        print(render_table(t, None, fmt="simple"))
    if result.analysis.missing:
        print(f"\nmissing: {', '.join(result.analysis.missing)}")
    for e in result.errors:
        print(f"error: {e}", file=sys.stderr)
    print(f"\nwrote {', '.join(str(f) for f in result.files)}  ({result.wall_time_s:.1f} s)")
    return 1 if result.errors else 0
