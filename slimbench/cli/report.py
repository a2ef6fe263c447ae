"""`python -m slimbench report`: tables and plots from result files, written as report.md.

Examples:
    python -m slimbench report results/runs/gpt-tiny-lr results/bench.json --out results/report
    python -m slimbench report results/                     # every readable JSON under results/
    python -m slimbench report runs/ --steps 0,100,200,299 --within 10 --loss final_train_loss

Reads sweep results (slimbench.run), SNR records and rules files, profiles, audits and pytest-benchmark
JSON (from `pytest suites/ --benchmark-json=FILE`), recognised by their content, from files or folders.
Prints every table, writes OUT/report.md, OUT/report.json, OUT/report.html (one file, figures embedded)
and the PNG figures.
"""
from __future__ import annotations

import argparse
import shlex
import sys


def _steps(text: str) -> tuple[int, ...]:
    try:
        steps = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated step numbers, got {text!r}") from None
    if not steps or any(s < 0 for s in steps):
        raise argparse.ArgumentTypeError(f"expected step numbers >= 0, got {text!r}")
    return steps


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("report", help="tables + plots (report.md) from sweeps, SNR/rules, benchmarks",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="*", default=["results"], metavar="PATH",
                   help="result files or folders (searched recursively; default: results)")
    p.add_argument("--out", default="report", help="output folder (default: %(default)s; results/ stays as committed)")
    p.add_argument("--loss", choices=("final_val_loss", "final_train_loss"), default="final_val_loss",
                   help="the loss of a run compared across lrs (default: %(default)s)")
    p.add_argument("--within", type=float, default=5.0, metavar="PCT",
                   help="robustness: lrs whose loss is within PCT%% of the best (default: %(default)s)")
    p.add_argument("--steps", type=_steps, metavar="S,S", help="loss-vs-step columns (default: 5 evenly spaced)")
    p.add_argument("--no-plots", action="store_true", help="tables only, no PNGs")
    p.add_argument("--quiet", action="store_true", help="print only where the report was written")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from slimbench.report import load
    from slimbench.report.markdown import SourceIndex, render_table, write_report
    from slimbench.report.table import Options

    if not args.within >= 0:
        raise ValueError(f"--within must be >= 0, got {args.within}")
    collection = load(args.paths)
    if not len(collection):
        raise ValueError(f"no result files found in {', '.join(args.paths)}"
                         + (f" ({len(collection.skipped)} JSON files skipped, e.g. {collection.skipped[0][0]}: "
                            f"{collection.skipped[0][1]})" if collection.skipped else ""))
    opts = Options(loss=args.loss, within=args.within / 100, steps=args.steps)
    command = "python -m slimbench report " + " ".join(shlex.quote(a) for a in sys.argv[2:]) \
        if len(sys.argv) > 1 and sys.argv[1] == "report" else None
    written = write_report(collection, args.out, opts, plots=not args.no_plots, command=command)
    if not args.quiet:
        index = SourceIndex(written.sources)
        for sec in written.sections:
            print(f"== {sec.title} ==")
            if sec.text:
                print(sec.text)
            for table in sec.tables:
                print(f"\n-- {table.title} --")
                print(render_table(table, index, fmt="simple"))
            print()
        print("sources:")
        for i, p in enumerate(written.sources):
            print(f"  [{i + 1}] {p}")
        print()
    for p, why in collection.skipped:  # even with --quiet: a file left out silently is the worst outcome
        print(f"warning: skipped {p}: {why}", file=sys.stderr)
    print(f"wrote {written.path} ({len(written.images)} plots, {len(written.sources)} source files)")
    return 0
