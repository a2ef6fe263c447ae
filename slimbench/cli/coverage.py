"""`python -m slimbench coverage`: what SlimAdam's paper rules save on each architecture, and every fallback's reason."""
from __future__ import annotations

import argparse
import json

from tabulate import tabulate

from slimbench.env import provenance
from slimbench.io import write_atomic
from slimbench.memory.coverage import DEFAULT_MODELS, coverage


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("coverage", help="paper-rule coverage per architecture (meta device, nothing allocated)",
                              description=__doc__.split(": ", 1)[1])
    p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                   help="comma-separated --model strings (presets, hf:<model_type>, package.module:factory); "
                        "default: the issue-11 set")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--out", default=None, help="also write the JSON here (atomically)")
    p.set_defaults(func=run)


def render(rows) -> str:
    table = [[r.model, r.model_class, f"{r.params / 1e6:,.1f}M", f"{r.saved_fraction:.2%}", r.compressed,
              r.per_block, r.vectors, r.fell_back] if not r.error else [r.model, "-", "-", "-", "-", "-", "-", r.error]
             for r in rows]
    out = [tabulate(table, headers=["model", "class", "params", "2nd moments saved", "compressed", "per block",
                                    "1-D (full)", "fell back"], disable_numparse=True), "", "fallbacks (>= 2-D weights kept full):"]
    for r in rows:
        for f in r.fallbacks:
            out.append(f"  {r.model}: {f['pattern']} x{f['count']} ({f['elements']:,} elements): {f['reason']}")
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    rows = coverage(models)
    doc = {"format": "slimbench.coverage", "version": 1, "command": "python -m slimbench coverage",
           "rows": [r.to_dict() for r in rows], "provenance": provenance("meta")}
    if args.out:
        write_atomic(args.out, json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc, indent=1) if args.format == "json" else render(rows))
    return 2 if any(r.error for r in rows) else 0
