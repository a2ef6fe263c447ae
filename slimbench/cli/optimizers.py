"""`python -m slimbench optimizers`: the optimizer registry, capability flags, and what is available here."""
from __future__ import annotations

import argparse
import json

from tabulate import tabulate

from slimbench.registry import REGISTRY, available


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("optimizers", help="list registry optimizers, their flags and availability",
                              description=__doc__.split(": ", 1)[1])
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    status = {a.name: a for a in available()}
    if args.format == "json":
        print(json.dumps([{**s.to_dict(), "available": status[n].to_dict()} for n, s in REGISTRY.items()], indent=1))
        return 0
    yes = lambda b: "yes" if b else "-"  # noqa: E731
    rows = []
    for name, s in REGISTRY.items():
        a = status[name]
        pkg = f"{s.package} {a.version or ''}".strip() if s.package else ("slimbench" if s.family == "slim" else "torch")
        rows.append([name, "ok" if a.ok else f"MISSING ({a.reason})", pkg, yes(s.foreach), yes(s.fused),
                     yes(s.closure), yes(s.needs_names), s.state_rule, s.description])
    print(tabulate(rows, headers=["name", "status", "package", "foreach", "fused", "closure", "needs names",
                                  "state", "description"]))
    return 0  # a missing third-party package is information here, not an error
