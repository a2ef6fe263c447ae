"""Command line: `python -m slimbench SUBCOMMAND ...`.

Each subcommand lives in its own module in this package with two functions, ``add_parser(subparsers)``
and ``run(args) -> int``. The CLI only parses, calls library functions that return data, and prints.
A :class:`slimbench.io.FormatError` or ``ValueError`` raised by the library is shown as one line
(``error: ...``) with exit code 2, never as a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from slimbench.io import FormatError

# Order is the order shown in --help.
SUBCOMMANDS = ("audit", "optimizers", "profile", "snr", "rules", "data", "run", "report", "compare", "experiment")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m slimbench",
        description="Audit and benchmark optimizer-state memory; measure SNR, derive SlimAdam rules, sweep learning rates.",
    )
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"slimbench.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"slimbench.cli.{name}":
                raise
            continue
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (FormatError, ValueError, FileNotFoundError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished results are kept", file=sys.stderr)
        return 130
