"""The native kernel cache loads only what it built (issue 12): private directories whatever the umask,
owner and mode checks, a recorded sha256 checked before dlopen, a key that covers the real compiler and
every flag; a bad library is rebuilt with one warning, never loaded, never a crash."""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import warnings
from pathlib import Path

import pytest

from slimbench.optim import _fused, _native, _native_build

pytestmark = pytest.mark.skipif(shutil.which(os.environ.get("CC") or "cc") is None and shutil.which("gcc") is None,
                                reason="needs a C compiler")


@pytest.fixture(autouse=True)
def _fresh_warnings():
    _fused._warned.clear()
    yield
    _fused._warned.clear()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SLIMBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "kernels"


def expected_library(kernels: Path) -> Path:
    return kernels / f"slimadam_{_native_build.toolchain().key()}.so"


def caught_warnings(fn) -> tuple[object, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn()
    return out, [str(w.message) for w in caught]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_cache_dirs_are_private_whatever_the_umask(cache: Path) -> None:
    old = os.umask(0)
    try:
        lib = _native.build()
    finally:
        os.umask(old)
    assert mode(cache) == 0o700 and mode(cache.parent) == 0o700
    assert mode(lib) & 0o022 == 0 and lib.with_suffix(".sha256").exists()
    assert not isinstance(_native_build.verify(lib), str)


def test_a_planted_library_is_never_loaded(cache: Path, tmp_path: Path) -> None:
    """A library put at the expected path by someone else: its constructor must not run (the hash check
    comes before dlopen); it is replaced by a fresh build, with one warning. Without a record, and with a
    record that does not match."""
    marker = tmp_path / "constructor-ran"
    src = tmp_path / "evil.c"
    src.write_text('#include <stdio.h>\n__attribute__((constructor)) static void evil(void) {'
                   f' FILE *f = fopen("{marker}", "w"); if (f) fclose(f); }}\n'
                   "int slimadam_abi_version(void) { return 2; }\n")
    target = expected_library(cache)
    _native_build.private_dir(cache)
    for record in (None, "0" * 64):
        subprocess.run([_native_build.toolchain().cc, "-shared", "-fPIC", "-o", str(target), str(src)], check=True)
        os.chmod(target, 0o700)
        if record is not None:
            target.with_suffix(".sha256").write_text(record)
        _fused._warned.clear()
        lib, msgs = caught_warnings(_native.build)
        assert lib == target and not marker.exists()
        assert len(msgs) == 1 and "not loading the cached kernel" in msgs[0]
        _native_build.load(lib).slimadam_step_f32  # the real kernel now, loaded through its checked fd
        assert not marker.exists()


def test_a_truncated_library_is_rebuilt(cache: Path) -> None:
    lib = _native.build()
    whole = lib.read_bytes()
    lib.write_bytes(whole[: len(whole) // 2])  # e.g. a full disk, or a killed copy
    with pytest.raises(_native.NativeUnavailable, match="sha256 does not match"):
        _native_build.load(lib)  # never dlopen'ed (that was a SIGBUS on every later run)
    again, msgs = caught_warnings(_native.build)
    assert again == lib and len(lib.read_bytes()) == len(whole)
    assert len(msgs) == 1 and "sha256 does not match" in msgs[0]


def test_a_library_others_can_write_is_rebuilt(cache: Path) -> None:
    lib = _native.build()
    os.chmod(lib, 0o666)
    assert "writable by group or others" in _native_build.verify(lib)
    again, msgs = caught_warnings(_native.build)
    assert again == lib and mode(lib) & 0o022 == 0 and len(msgs) == 1 and "writable by group" in msgs[0]


def test_a_directory_of_someone_else_is_not_used(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Owned by another uid: built in a fresh private temporary directory instead, with one warning."""
    cache.mkdir(parents=True)
    monkeypatch.setattr(_native_build.os, "geteuid", lambda: os.getuid() + 4242)
    monkeypatch.setattr(_native_build, "_temp", None)
    got, msgs = caught_warnings(lambda: _native_build.private_dir(cache))
    assert got != cache and mode(got) == 0o700 and got.stat().st_uid == os.getuid()
    assert len(msgs) == 1 and f"owned by uid {os.getuid()}" in msgs[0] and str(got) in msgs[0]


def test_our_own_directory_writable_by_others_is_tightened(cache: Path) -> None:
    cache.mkdir(parents=True)
    os.chmod(cache, 0o777)
    got, msgs = caught_warnings(lambda: _native_build.private_dir(cache))
    assert got == cache and mode(cache) == 0o700 and len(msgs) == 1 and "made it private" in msgs[0]


def test_the_key_covers_the_real_compiler_and_every_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A wrapper that adds flags is another compiler; a sanitized build is another library."""
    monkeypatch.delenv(_native_build.SANITIZE_ENV, raising=False)
    plain = _native_build.toolchain()
    keys = {plain.key()}
    for i, extra in enumerate(("-O1", "-O1 -ffast-math")):
        wrapper = tmp_path / f"cc{i}"
        wrapper.write_text(f'#!/bin/sh\nexec {plain.cc} {extra} "$@"\n')
        wrapper.chmod(0o755)
        monkeypatch.setenv("CC", str(wrapper))
        tc = _native_build.toolchain()
        assert tc.cc == os.path.realpath(wrapper)
        keys.add(tc.key())
    monkeypatch.setenv("CC", plain.cc)
    monkeypatch.setenv(_native_build.SANITIZE_ENV, "1")
    sanitized = _native_build.toolchain()
    assert "-fsanitize=address,undefined" in sanitized.flags
    keys.add(sanitized.key())
    assert len(keys) == 4


def test_a_loadable_foreign_library_is_rebuilt_not_an_attribute_error(cache: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A library with a valid hash record but not this kernel (no entry points): rebuilt once, then used."""
    src = tmp_path / "empty.c"
    src.write_text("int unrelated(void) { return 1; }\n")
    target = expected_library(cache)
    _native_build.private_dir(cache)
    subprocess.run([_native_build.toolchain().cc, "-shared", "-fPIC", "-o", str(target), str(src)], check=True)
    os.chmod(target, 0o700)
    target.with_suffix(".sha256").write_text(hashlib.sha256(target.read_bytes()).hexdigest())
    monkeypatch.setattr(_native, "_lib", None)
    monkeypatch.setattr(_native, "_lib_error", None)
    monkeypatch.setattr(_native, "DTYPES", dict(_native.DTYPES))
    lib = _native.library()
    assert lib.slimadam_abi_version() == _native.ABI
    assert not isinstance(_native_build.verify(target), str)


def test_sanitize_without_the_asan_runtime_is_a_fallback(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    """ASan aborts the process when its runtime is not first: refuse to load instead."""
    monkeypatch.setenv(_native_build.SANITIZE_ENV, "1")
    monkeypatch.setattr(_native_build, "_asan_loaded", lambda: False)
    with pytest.raises(_native.NativeUnavailable, match="LD_PRELOAD"):
        _native_build.load(cache / "whatever.so")
