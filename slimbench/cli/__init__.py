"""Command line: `python -m slimbench SUBCOMMAND ...`.

Each subcommand lives in its own module in this package with two functions, ``add_parser(subparsers)``
and ``run(args) -> int``. The CLI only parses, calls library functions that return data, and prints.

One contract for every subcommand: bad input (a bad argument, a bad or missing file, a value the library
refuses with ``FormatError`` / ``ValueError`` / ``KeyError``, a file that cannot be read or written) is one
line ``error: <what and where>`` on stderr and exit code 2, never a traceback. A closed stdout (``| head``)
ends the command quietly with exit code 141, as a shell reports SIGPIPE.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from slimbench.io import FormatError

# Order is the order shown in --help.
SUBCOMMANDS = ("audit", "coverage", "optimizers", "profile", "snr", "rules", "data", "run", "report", "compare", "experiment")
EXIT_BAD_INPUT = 2
EXIT_BROKEN_PIPE = 141


def one_line(text: object) -> str:
    """A message as one line (a multi-line library message keeps every line, joined by '; ')."""
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip()) or "(no message)"


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one ``error:`` line naming the subcommand (exit 2), not a usage dump."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"error: {self.prog}: {one_line(message)} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="python -m slimbench",
        description="Audit and benchmark optimizer-state memory; measure SNR, derive SlimAdam rules, sweep learning rates.",
    )
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")  # subparsers are Parsers too
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"slimbench.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"slimbench.cli.{name}":
                raise
            continue
        module.add_parser(sub)
    return parser


def _describe(e: BaseException) -> str:
    if isinstance(e, KeyError) and e.args:
        return one_line(e.args[0])
    if isinstance(e, OSError) and e.strerror:  # errno errors: "PATH: No space left on device"
        return one_line(f"{e.filename}: {e.strerror}" if e.filename else e.strerror)
    return one_line(e)


def _quiet_broken_pipe() -> int:
    """stdout's reader went away (``| head``): point stdout at /dev/null so the exit flush stays silent."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (captured in tests)
        pass
    return EXIT_BROKEN_PIPE


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; returns its exit code (0 ok, 1 a failure it reports, 2 bad input, 141 closed pipe)."""
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as e:  # --help (0) or a usage error (2, already printed as one line)
            return e.code if isinstance(e.code, int) else EXIT_BAD_INPUT
        if not getattr(args, "func", None):
            build_parser().print_help()
            return 0
        try:
            code = int(args.func(args) or 0)
        except (FormatError, ValueError, KeyError, OSError) as e:
            if isinstance(e, BrokenPipeError):
                raise
            print(f"error: {_describe(e)}", file=sys.stderr)
            return EXIT_BAD_INPUT
        sys.stdout.flush()  # inside the guard: a closed pipe surfaces here, not at interpreter exit
        return code
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except KeyboardInterrupt:
        print("interrupted; finished results are kept", file=sys.stderr)
        return 130
