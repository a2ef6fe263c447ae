"""`python -m slimbench compare BASELINE NEW`: the regression gate; exit 1 if a checked metric regressed.

Examples:
    python -m slimbench compare results/baseline/sweep /tmp/ci/sweep
    python -m slimbench compare results/baseline/bench-core.json /tmp/bench.json --check step_ratio:50% \\
        --check state_bytes:exact
    python -m slimbench compare base/ new/ --check final_loss:0.02 --all --out /tmp/compare.json

BASELINE and NEW are result files or folders (sweep runs, benchmark JSON, profiles, audits). Entries are
matched by run id / benchmark name. Checks are METRIC:exact, METRIC:N% or METRIC:N (absolute); default:
state_bytes:exact final_loss:5% diverged:0 step_ratio:50%. Metrics: state_bytes, saved_fraction,
final_loss, best_loss, diverged, step_ratio, step_time_s, peak_bytes, transient_bytes, lr_width (a sweep's
lr-band width within 5% of the best loss, per task and optimizer; larger is better: --check lr_width:50%).
Exit codes: 0 no regression, 1 regression, 2 bad input.
"""
from __future__ import annotations

import argparse
import sys

from tabulate import tabulate


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("compare", help="regression gate: compare NEW results with a BASELINE",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("baseline", nargs="+", metavar="BASELINE", help="baseline file(s) or folder(s)")
    p.add_argument("new", metavar="NEW", help="the new results: a file or folder")
    p.add_argument("--check", action="append", default=[], metavar="METRIC:THRESHOLD",
                   help="a gate (repeatable); replaces the defaults when given")
    p.add_argument("--allow-missing", action="store_true",
                   help="a baseline entry absent from NEW is reported, not a failure")
    p.add_argument("--all", action="store_true", help="show every judged metric, not only what moved")
    p.add_argument("--out", "--json", dest="out", metavar="FILE",
                   help="also write the comparison as JSON (--out, as in every subcommand; --json is its old name)")
    p.set_defaults(func=run)


def _fmt(metric: str, v: float | None) -> str:
    if v is None:
        return "-"
    if metric.endswith("_bytes"):
        return f"{int(v):,}"
    if metric == "diverged":
        return "yes" if v else "no"
    return f"{v:.4g}"


def _short(key: str, width: int = 70) -> str:
    return key if len(key) <= width else key[: width - 3] + "..."


def run(args: argparse.Namespace) -> int:
    from slimbench.io import write_json_atomic
    from slimbench.report.compare import DEFAULT_CHECKS, compare, parse_check
    from slimbench.report.load import load

    base_paths, new_path = args.baseline, args.new
    checks = [parse_check(c) for c in (args.check or DEFAULT_CHECKS)]
    baseline, new = load(base_paths), load([new_path])
    for p, why in baseline.skipped + new.skipped:  # one line each: a file left out is never silent
        print(f"warning: skipped {p}: {why}", file=sys.stderr)
    if not len(baseline):
        raise ValueError(f"no result files in the baseline {', '.join(base_paths)}")
    result = compare(baseline, new, checks, allow_missing=args.allow_missing)

    shown = result.deltas if args.all else result.moved()
    order = {"regressed": 0, "changed": 1, "missing": 2, "improved": 3, "new": 4, "within": 5, "same": 6}
    shown = sorted(shown, key=lambda d: (order.get(d.status, 9), d.key, d.metric))
    if shown:
        rows = [[d.status.upper() if d.failed and not (d.status == "missing" and args.allow_missing) else d.status,
                 _short(d.key), d.metric, _fmt(d.metric, d.baseline), _fmt(d.metric, d.new),
                 "-" if d.relative is None else f"{100 * d.relative:+.1f}%", d.check] for d in shown]
        print(tabulate(rows, headers=["status", "entry", "metric", "baseline", "new", "change", "check"],
                       disable_numparse=True))
        print()
    for note in result.notes:
        print(f"note: {note}")
    counts = ", ".join(f"{v} {k}" for k, v in sorted(result.counts().items()))
    print(f"checks: {' '.join(c.text for c in checks)}")
    print(f"{result.baseline_entries} baseline entries, {result.new_entries} new entries; {counts or 'nothing judged'}")
    if args.out:
        write_json_atomic(args.out, {"format": "slimbench.comparison", "version": 1, "baseline": base_paths,
                                      "new": new_path, **result.to_dict()})
    if result.failed:
        print(f"REGRESSION: {len(result.regressions)} failed check(s)", file=sys.stderr)
        return 1
    print("ok: no regression")
    return 0
