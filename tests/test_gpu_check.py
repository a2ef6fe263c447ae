"""suites/gpu_check.sh without a CUDA device: one line, a non-zero exit, at once, and nothing written."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "suites" / "gpu_check.sh"


@pytest.mark.skipif(not Path("/bin/bash").exists(), reason="needs bash")
def test_gpu_check_fails_fast_without_cuda(tmp_path: Path) -> None:
    out = tmp_path / "gpu"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}  # no GPU, even on a GPU machine
    proc = subprocess.run(["bash", str(SCRIPT), str(out)], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 3
    assert proc.stderr.strip().splitlines() == [
        "gpu_check: no CUDA device (torch.cuda.is_available() is False); nothing was run"]
    assert not out.exists()


def test_gpu_check_needs_an_output_folder() -> None:
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "usage: suites/gpu_check.sh OUT_DIR" in proc.stderr


def test_gpu_sizes_are_opt_in(tmp_path: Path) -> None:
    """The ~0.1-1B cases are collected but skipped unless --slimbench-gpu-sizes, even under -m large."""
    suite = SCRIPT.parent / "test_bench_fused.py"
    proc = subprocess.run([sys.executable, "-m", "pytest", str(suite), "-q", "-rs", "-m", "gpu_size or large",
                           "-k", "gpt-1b", "--benchmark-disable", "-p", "no:cacheprovider"],
                          capture_output=True, text=True, timeout=120, cwd=SCRIPT.parents[1])
    assert "4 skipped" in proc.stdout, proc.stdout[-2000:]
    assert "run with --slimbench-gpu-sizes" in proc.stdout


def test_gpu_check_inline_python_compiles() -> None:
    """The script's inline Python (the audit-vs-allocated step, the heredocs) is at least valid Python: it
    runs only on a GPU, so a syntax error would otherwise first show there."""
    import re

    text = SCRIPT.read_text()
    programs = re.findall(r"-c '\n(.*?)' ", text, flags=re.S)
    programs += re.findall(r"<<'EOF'[^\n]*\n(.*?)\nEOF\n", text, flags=re.S)
    assert len(programs) == 3 and any("audit_vs_allocated(" in p for p in programs)
    for src in programs:
        compile(src, str(SCRIPT), "exec")


def test_every_cuda_only_test_carries_the_cuda_marker() -> None:
    """gpu_check.sh selects the CUDA tests with ``-m cuda``: a test that only skips without CUDA (a bare
    ``skipif``) would never run there. Every test skipped for "needs a CUDA device" must carry the marker."""
    import ast

    unmarked = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        tree = ast.parse(path.read_text())
        aliases = {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets
                   if isinstance(t, ast.Name) and "needs a CUDA device" in ast.unparse(n.value)}
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef) or not fn.name.startswith("test"):
                continue
            decos = [ast.unparse(d) for d in fn.decorator_list]
            skips = any("needs a CUDA device" in d or d in aliases for d in decos)
            if skips and "pytest.mark.cuda" not in decos:
                unmarked.append(f"{path.name}::{fn.name}")
    assert unmarked == []
