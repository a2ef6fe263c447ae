"""Read everything a report or a comparison needs from paths, recognising each file by what it is.

slimbench files carry a ``format`` field (``slimbench.run``, ``slimbench.snr``, ``slimbench.rules``,
``slimbench.profile``, ``slimbench.audit``); pytest-benchmark JSON has none and is recognised by its
structure (``machine_info`` + a ``benchmarks`` list). A folder is searched recursively for ``*.json``
(names starting with ``.`` are temporaries or tool folders, e.g. a sweep's ``.submitit``, and are
skipped). A file named explicitly must be a kind listed here; a file found in a folder that is not is
listed in ``Collection.skipped`` with the reason, so one stray JSON never stops a report.

Every loaded item keeps the path it came from, so every number in a report traces to its file.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from slimbench.bench.results import RUN_FORMAT, RunResult, load_result
from slimbench.io import FormatError, read_json, read_versioned
from slimbench.rules import RULES_FORMAT, RuleSet, load_rules
from slimbench.snr.record import SNR_FORMAT, SNRRecord, load_snr

PROFILE_FORMAT = "slimbench.profile"  # slimbench.memory.profile.PROFILE_FORMAT (not imported: keeps torch
AUDIT_FORMAT = "slimbench.audit"  # model code out of report loading)
BENCH_KIND = "pytest-benchmark"
REPORT_FORMAT = "slimbench.report"  # a report's own report.json: output, never input; skipped silently in folders

T = TypeVar("T")


@dataclass(frozen=True)
class Item(Generic[T]):
    """One loaded object and the file it came from."""

    path: str
    data: T


@dataclass
class Collection:
    """Everything read from the paths of one report / one side of a comparison."""

    runs: list[Item[RunResult]] = field(default_factory=list)
    snr: list[Item[SNRRecord]] = field(default_factory=list)
    rules: list[Item[RuleSet]] = field(default_factory=list)
    benchmarks: list[Item[dict]] = field(default_factory=list)  # pytest-benchmark JSON, as written
    profiles: list[Item[dict]] = field(default_factory=list)  # slimbench.profile, as written
    audits: list[Item[dict]] = field(default_factory=list)  # slimbench.audit, as written
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why) found in folders

    @property
    def paths(self) -> list[str]:
        """Every loaded file, in load order (the numbering of a report's sources)."""
        out: list[str] = []
        for items in (self.runs, self.snr, self.rules, self.benchmarks, self.profiles, self.audits):
            out.extend(i.path for i in items)
        return out

    def __len__(self) -> int:
        return len(self.paths)

    def counts(self) -> dict[str, int]:
        return {"runs": len(self.runs), "snr": len(self.snr), "rules": len(self.rules),
                "benchmarks": len(self.benchmarks), "profiles": len(self.profiles), "audits": len(self.audits),
                "skipped": len(self.skipped)}


def kind_of(obj: Any) -> str | None:
    """The kind of a parsed JSON document: a slimbench format name, 'pytest-benchmark', or None."""
    if not isinstance(obj, dict):
        return None
    fmt = obj.get("format")
    if isinstance(fmt, str):
        return fmt
    if isinstance(obj.get("benchmarks"), list) and isinstance(obj.get("machine_info"), dict):
        return BENCH_KIND
    return None


KINDS = (RUN_FORMAT, SNR_FORMAT, RULES_FORMAT, BENCH_KIND, PROFILE_FORMAT, AUDIT_FORMAT)


def _read_json(path: Path) -> Any:
    return read_json(path)  # strict: size limit, UTF-8, no duplicate keys; errors are FormatError


def _check_benchmark(path: Path, obj: dict) -> dict:
    for i, b in enumerate(obj["benchmarks"]):
        if not isinstance(b, dict) or "name" not in b or not isinstance(b.get("stats"), dict):
            raise FormatError(f"{path}: pytest-benchmark entry #{i} has no 'name' or 'stats'")
    return obj


def load_file(path: str | os.PathLike, into: Collection) -> str:
    """Load one file into ``into`` by its kind; returns the kind. Unknown kinds raise FormatError."""
    p = Path(path)
    if not p.is_file():
        raise FormatError(f"{p}: no such file")
    obj = _read_json(p)
    kind = kind_of(obj)
    where = str(p)
    if kind == RUN_FORMAT:
        into.runs.append(Item(where, load_result(p)))
    elif kind == SNR_FORMAT:
        into.snr.append(Item(where, load_snr(p)))
    elif kind == RULES_FORMAT:
        into.rules.append(Item(where, load_rules(p)))
    elif kind == BENCH_KIND:
        into.benchmarks.append(Item(where, _check_benchmark(p, obj)))
    elif kind == PROFILE_FORMAT:
        into.profiles.append(Item(where, read_versioned(p, PROFILE_FORMAT, 1)))
    elif kind == AUDIT_FORMAT:
        into.audits.append(Item(where, read_versioned(p, AUDIT_FORMAT, 1)))
    elif kind is None:
        raise FormatError(f"{p}: not a slimbench file (no 'format' field) nor pytest-benchmark JSON")
    else:
        raise FormatError(f"{p}: a {kind!r} file, which reports do not read (they read: {', '.join(KINDS)})")
    return kind


def _walk(folder: Path) -> Iterable[Path]:
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.endswith(".json") and not name.startswith("."):
                yield Path(root) / name


def load(paths: Sequence[str | os.PathLike]) -> Collection:
    """Load files and folders (recursively) into one :class:`Collection`.

    Raises FormatError for a missing path or an explicitly named file that cannot be read; in folders,
    unreadable or unknown JSON files are collected in ``skipped`` instead.
    """
    out = Collection()
    seen: set[Path] = set()
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            for f in _walk(p):
                if f.resolve() in seen:
                    continue
                seen.add(f.resolve())
                try:
                    if f.name == "report.json" and kind_of(_read_json(f)) == REPORT_FORMAT:
                        continue
                    load_file(f, out)
                except FormatError as e:
                    out.skipped.append((str(f), str(e).removeprefix(f"{f}: ")))
        elif p.exists():
            if p.resolve() not in seen:
                seen.add(p.resolve())
                load_file(p, out)
        else:
            raise FormatError(f"{p}: no such file or folder")
    return out
