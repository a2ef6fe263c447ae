"""Versioned JSON files: atomic writes and reads that fail with one clear line.

Every file slimbench writes (rules, SNR records, run results, baselines) is a JSON object with a
``format`` name and an integer ``version``. Readers call :func:`read_versioned`, which turns every way a
file can be wrong (missing, truncated, another kind of file, written by a newer slimbench) into a
:class:`FormatError` whose message names the file and the problem, never a traceback of internals.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


class FormatError(ValueError):
    """A slimbench file that cannot be used; the message is meant to be shown to the user as is."""


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """``write(tmp)`` to a temporary file beside ``path``, then rename it over ``path``.

    A crash leaves either the old file or the new one, never half of one: this is what lets a killed
    sweep resume safely and concurrent jobs share a cache.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; results and caches are meant to be shared
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as JSON atomically (see :func:`atomic_write`), flushed to disk before the rename."""
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1, allow_nan=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())

    return atomic_write(path, write)


def read_versioned(path: str | os.PathLike, fmt: str, max_version: int) -> dict:
    """Read a slimbench JSON file of kind ``fmt`` written at a version this code understands."""
    path = Path(path)
    if not path.exists():
        raise FormatError(f"{path}: no such file")
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise FormatError(f"{path}: not valid JSON (truncated or corrupt? {e.msg} at line {e.lineno})") from None
    if not isinstance(obj, dict) or "format" not in obj:
        raise FormatError(f"{path}: not a slimbench file (no 'format' field); expected a {fmt!r} file")
    if obj["format"] != fmt:
        raise FormatError(f"{path}: is a {obj['format']!r} file, expected a {fmt!r} file")
    version = obj.get("version")
    if not isinstance(version, int):
        raise FormatError(f"{path}: {fmt!r} file without an integer 'version'")
    if version > max_version:
        raise FormatError(
            f"{path}: {fmt!r} version {version} is newer than this slimbench understands (<= {max_version}); "
            "upgrade slimbench"
        )
    return obj
