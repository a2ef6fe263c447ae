"""Provenance: what produced a number (library versions, device, threads, commit).

Every result file embeds :func:`provenance` so a report can say exactly where each figure came from.
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from functools import lru_cache
from pathlib import Path

import torch

_LIBRARIES = ("slimbench", "torch", "numpy", "torch-optimizer", "pytorch-optimizer", "adam-mini")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the slimbench checkout in use (None outside a git checkout); '+dirty' if modified."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(device: str | torch.device | None = None) -> dict:
    """Versions, machine and threading facts that affect optimizer numbers."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    info = {
        "versions": {name: _version(name) for name in _LIBRARIES},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "commit": git_commit(),
    }
    return info
