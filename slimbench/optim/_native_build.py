"""Building and loading the native kernel: a cache that loads only what it built.

The library is compiled on first use into ``$SLIMBENCH_CACHE/kernels`` (default
``~/.cache/slimbench/kernels``) and dlopen'ed: whatever sits at that path runs as the user, so nothing is
loaded on trust.

* The cache directories are created 0700 whatever the umask. A directory owned by someone else is not
  used (the kernel is built in a fresh private temporary directory instead, with one warning); one of
  ours that group or others can write is tightened to 0700, with one warning.
* The name is a hash of everything that shapes the binary: the source, the full flag list, the resolved
  compiler (``shutil.which`` + ``os.path.realpath``), the compiler file's own sha256 (a wrapper script
  that adds flags is a different compiler) and its ``--version`` output, the machine and the CPU's
  model and flags (``-march=native``).
* The library's sha256 is written beside it (``.sha256``, atomically) after a successful build. Before
  loading, the file is opened without following links, must be a regular file owned by the current
  user and not writable by group or others, and its bytes must hash to the recorded value; the bytes
  checked are the bytes loaded (dlopen of ``/proc/self/fd/N``). A library that fails any check
  (truncated, corrupt, planted, wrong mode, no record) is rebuilt, with one warning, never loaded.

``SLIMBENCH_NATIVE_SANITIZE=1`` builds with AddressSanitizer and UBSan (another cache key); loading such
a library needs the ASan runtime first in the process (``LD_PRELOAD=$(gcc -print-file-name=libasan.so)``),
checked here so a missing preload is a fallback rather than ASan's abort.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

SOURCE = Path(__file__).with_name("_native_kernel.c")
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fopenmp", "-fPIC", "-shared")
SANITIZE_FLAGS = ("-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer")
LIBS = ("-lm",)
SANITIZE_ENV = "SLIMBENCH_NATIVE_SANITIZE"


class NativeUnavailable(RuntimeError):
    """The kernel cannot be built or loaded here (no C compiler, compile error); the reason says which."""


def cache_dir() -> Path:
    return Path(os.environ.get("SLIMBENCH_CACHE", Path.home() / ".cache" / "slimbench")) / "kernels"


def sanitized() -> bool:
    return os.environ.get(SANITIZE_ENV, "") not in ("", "0")


def flags() -> tuple[str, ...]:
    """The full compile flags: FLAGS, plus the sanitizers under $SLIMBENCH_NATIVE_SANITIZE."""
    return FLAGS + SANITIZE_FLAGS if sanitized() else FLAGS


def _warn(msg: str) -> None:
    from slimbench.optim._backends import warn_once  # one warning per distinct message, as every fallback

    warn_once(msg)


@dataclass(frozen=True)
class Toolchain:
    cc: str  # the compiler's resolved real path
    version: str  # its --version output
    flags: tuple[str, ...]

    def key(self) -> str:
        """What names the library: a hash of everything that shapes the binary."""
        parts = [SOURCE.read_text(), self.cc, _file_sha256(self.cc), self.version, "\0".join(self.flags + LIBS),
                 platform.machine(), _cpu_signature()]
        return hashlib.sha256("\0\0".join(parts).encode()).hexdigest()[:16]


def _cpu_signature() -> str:
    """The CPU's model and feature flags: what -march=native compiles for."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        keep = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags", "Features"))]
        return "\n".join(sorted(set(keep)))
    except OSError:
        return platform.processor() or platform.machine()


def _file_sha256(path: str | Path) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return "unreadable"


def toolchain() -> Toolchain:
    """The C compiler ($CC, else cc, else gcc), resolved to its real path, with its version and our flags."""
    for cc in (os.environ.get("CC"), "cc", "gcc"):
        found = shutil.which(cc) if cc else None
        if found:
            break
    else:
        raise NativeUnavailable("no C compiler found (set $CC, or install gcc)")
    real = os.path.realpath(found)
    try:
        version = subprocess.run([real, "--version"], capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise NativeUnavailable(f"{real} --version failed: {e}") from e
    return Toolchain(real, version, flags())


def _loose(st: os.stat_result) -> str | None:
    """Why a file or directory with this stat may hold someone else's code, or None."""
    if st.st_uid != os.geteuid():
        return f"owned by uid {st.st_uid}, not {os.geteuid()}"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def private_dir(path: Path) -> Path:
    """``path`` as a directory only the current user can write: missing components are created 0700
    (whatever the umask); ours but group/other-writable is tightened, with one warning. A directory owned
    by someone else, or a non-directory, gives a fresh private temporary directory instead, with one
    warning."""
    missing = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    try:
        for d in reversed(missing):
            os.mkdir(d, 0o700)
            os.chmod(d, 0o700)  # mkdir's mode is masked by the umask: set it exactly
    except FileExistsError:  # another process made it meanwhile: checked below like any existing directory
        pass
    except OSError as e:
        raise NativeUnavailable(f"cannot create the kernel cache {path}: {e}") from e
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError as e:
        raise NativeUnavailable(f"cannot use the kernel cache {path}: {e}") from e
    why = "not a directory" if not stat.S_ISDIR(st.st_mode) else _loose(st)
    if why and st.st_uid == os.geteuid() and stat.S_ISDIR(st.st_mode):
        os.chmod(path, 0o700)
        _warn(f"SlimAdam(fused=True): the kernel cache {path} was {why}; made it private (0700)")
        return path
    if why:
        fresh = _private_temp()
        _warn(f"SlimAdam(fused=True): the kernel cache {path} is {why}; building the native kernel in {fresh} "
              "for this process instead")
        return fresh
    return path


_temp: Path | None = None


def _private_temp() -> Path:
    global _temp
    if _temp is None or not _temp.is_dir():
        _temp = Path(tempfile.mkdtemp(prefix="slimbench-kernels-"))  # 0700, ours
    return _temp


def _read_private(path: Path) -> tuple[int, bytes] | str:
    """(open fd, content) of a regular file only we can write, or why not. The fd is what gets loaded,
    so the checked bytes are the loaded bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return f"cannot be opened ({e.strerror})"
    st = os.fstat(fd)
    why = "not a regular file" if not stat.S_ISREG(st.st_mode) else _loose(st)
    if why:
        os.close(fd)
        return why
    with os.fdopen(os.dup(fd), "rb") as f:
        return fd, f.read()


def verify(lib: Path) -> tuple[int, str] | str:
    """An open fd of ``lib`` and its sha256 when it is ours, private and matches its recorded hash;
    otherwise the reason (a string). The caller closes the fd."""
    record = _read_private(lib.with_suffix(".sha256"))
    if isinstance(record, str):
        return f"its hash record is {record}"
    os.close(record[0])
    got = _read_private(lib)
    if isinstance(got, str):
        return f"it is {got}"
    fd, content = got
    digest = hashlib.sha256(content).hexdigest()
    if record[1].decode(errors="replace").strip() != digest:
        os.close(fd)
        return "its sha256 does not match the one recorded when it was built (truncated, corrupt or replaced)"
    return fd, digest


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # 0600, a fresh name
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def build(force: bool = False, directory: Path | None = None) -> Path:
    """The path of a verified kernel library in ``directory`` (default :func:`cache_dir`), compiled once per
    source/flags/compiler/CPU. A cached library that fails :func:`verify` is rebuilt, with one warning."""
    tc = toolchain()
    out = private_dir(directory or cache_dir()) / f"slimadam_{tc.key()}.so"
    if not force:
        checked = verify(out)
        if not isinstance(checked, str):
            os.close(checked[0])
            return out
        if out.exists() or out.is_symlink():
            _warn(f"SlimAdam(fused=True): not loading the cached kernel {out}: {checked}; rebuilding it")
    return _compile(tc, out)


def _compile(tc: Toolchain, out: Path) -> Path:
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        try:
            proc = subprocess.run([tc.cc, *tc.flags, "-o", tmp, str(SOURCE), *LIBS], capture_output=True,
                                  text=True, check=False, timeout=300)
        except subprocess.SubprocessError as e:  # e.g. a hung compiler: fall back rather than crash
            raise NativeUnavailable(f"{tc.cc} did not finish compiling {SOURCE.name}: {e}") from e
        if proc.returncode != 0:
            raise NativeUnavailable(f"{tc.cc} failed to compile {SOURCE.name}: {proc.stderr.strip()[:300]}")
        os.chmod(tmp, 0o700)  # the linker's mode follows the umask
        digest = hashlib.sha256(Path(tmp).read_bytes()).hexdigest()
        _write_atomic(out.with_suffix(".sha256"), f"{digest}\n".encode())
        os.replace(tmp, out)  # atomic: concurrent processes never load a half-written library
    except OSError as e:
        raise NativeUnavailable(f"could not write the kernel into {out.parent}: {e}") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _asan_loaded() -> bool:
    try:
        return "libasan" in Path("/proc/self/maps").read_text()
    except OSError:
        return False


def load(lib: Path) -> ctypes.CDLL:
    """dlopen ``lib`` after :func:`verify` (raises NativeUnavailable saying why it would not)."""
    if sanitized() and not _asan_loaded():
        raise NativeUnavailable(f"{SANITIZE_ENV}=1 needs the ASan runtime preloaded "
                                "(LD_PRELOAD=$(gcc -print-file-name=libasan.so))")
    checked = verify(lib)
    if isinstance(checked, str):
        raise NativeUnavailable(f"not loading {lib}: {checked}")
    fd = checked[0]
    try:
        via_fd = f"/proc/self/fd/{fd}"
        return ctypes.CDLL(via_fd if os.path.exists(via_fd) else str(lib))
    except OSError as e:
        raise NativeUnavailable(f"could not load the kernel {lib}: {e}") from e
    finally:
        os.close(fd)
