"""Versioned JSON files: atomic writes and reads that fail with one clear line.

Every file slimbench writes (rules, SNR records, run results, baselines, reports, plots, caches) goes through
:func:`write_atomic`: a unique temporary file created in the target folder (``mkstemp``, ``O_EXCL``), then
``os.replace`` onto the target. A pre-existing path, even a planted symlink, is only ever replaced, never
written through, and a crash or a full disk leaves the old file or the new one, never half of one.

Every JSON file is an object with a ``format`` name and a positive integer ``version``. Readers call
:func:`read_versioned`, which turns every way a file can be wrong (missing, too big, truncated, duplicate
keys, another kind of file, written by a newer slimbench) into a :class:`FormatError` whose message names
the file and the problem, never a traceback of internals.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

# JSON files slimbench reads are < 1 MB in practice; a bigger one is refused before parsing, in milliseconds,
# instead of taking minutes and gigabytes to fail later.
MAX_JSON_BYTES = 32 * 2**20


class FormatError(ValueError):
    """A slimbench file that cannot be used; the message is meant to be shown to the user as is."""


def _new_temp(path: Path) -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o644)  # mkstemp makes 0600; results and caches are meant to be shared
    return fd, tmp


def write_atomic(path: str | os.PathLike, data: bytes | str | Callable[[IO[bytes]], None]) -> Path:
    """Write ``data`` (bytes, text as UTF-8, or a callback given the open binary file) to ``path`` atomically.

    The temporary file is written through the descriptor ``mkstemp`` returned (never re-opened by name),
    flushed to disk, then renamed over ``path``. Any failure (ENOSPC included) removes it and re-raises.
    """
    path = Path(path)
    fd, tmp = _new_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        _remove(tmp)
        if isinstance(e, OSError) and e.filename is None:
            e.filename = str(path)  # a full disk says which file it could not write
        raise
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """``write(tmp)`` to a fresh temporary file beside ``path``, then rename it over ``path``.

    For libraries that can only save to a file name (a tokenizer's ``save``); prefer :func:`write_atomic`.
    """
    path = Path(path)
    fd, tmp = _new_temp(path)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    return path


def _remove(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as JSON atomically (see :func:`write_atomic`)."""
    return write_atomic(path, json.dumps(obj, indent=1, allow_nan=True) + "\n")


def probe_writable(folder: str | os.PathLike) -> None:
    """Create and remove a temporary file in ``folder`` (created if missing): fails now, with the OSError,
    if nothing can be written there, instead of after hours of training."""
    folder = Path(folder)
    fd, tmp = _new_temp(folder / "probe")
    try:
        os.write(fd, b"ok")
        os.fsync(fd)
    finally:
        os.close(fd)
        _remove(tmp)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise FormatError(f"duplicate key {key!r}")
        out[key] = value
    return out


def read_json(path: str | os.PathLike, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Parse a JSON file strictly: it must exist, be at most ``max_bytes``, be UTF-8 and repeat no key."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: no such file")
    size = path.stat().st_size
    if size > max_bytes:
        raise FormatError(f"{path}: {size / 2**20:.1f} MiB is larger than slimbench reads "
                          f"({max_bytes / 2**20:.0f} MiB); not a slimbench file?")
    try:
        return json.loads(path.read_bytes().decode("utf-8"), object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as e:
        raise FormatError(f"{path}: not valid JSON (truncated or corrupt? {e.msg} at line {e.lineno})") from None
    except UnicodeDecodeError:
        raise FormatError(f"{path}: not a UTF-8 text file") from None
    except FormatError as e:
        raise FormatError(f"{path}: not valid slimbench JSON ({e})") from None
    except RecursionError:
        raise FormatError(f"{path}: JSON nested too deeply") from None


def read_versioned(path: str | os.PathLike, fmt: str, max_version: int) -> dict:
    """Read a slimbench JSON file of kind ``fmt`` written at a version this code understands."""
    obj = read_json(path)
    if not isinstance(obj, dict) or "format" not in obj:
        raise FormatError(f"{path}: not a slimbench file (no 'format' field); expected a {fmt!r} file")
    if obj["format"] != fmt:
        raise FormatError(f"{path}: is a {obj['format']!r} file, expected a {fmt!r} file")
    version = obj.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise FormatError(f"{path}: {fmt!r} file without a positive integer 'version' (got {version!r})")
    if version > max_version:
        raise FormatError(
            f"{path}: {fmt!r} version {version} is newer than this slimbench understands (<= {max_version}); "
            "upgrade slimbench"
        )
    return obj
