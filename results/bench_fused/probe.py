"""Two checks behind notes in results/bench_fused/README.md (not part of the suites; run from the repo root).

    python results/bench_fused/probe.py weights   # one weight at a time: fused SlimAdam / fused AdamW per K
    python results/bench_fused/probe.py rss       # 2000 fused steps of the 4M GPT set: VmRSS before/after
    python results/bench_fused/probe.py weights 2 # with 2 torch threads (default 1)

1 torch thread unless a second argument says otherwise. ``weights`` times each optimizer alone (best of 5 rounds of 5 steps), so it measures one
tensor's kernel, not a training step's cache behaviour; the suite's interleaved rounds are the headline.
"""
from __future__ import annotations

import ctypes
import re
import sys
import time
from pathlib import Path

import torch

from slimbench import SlimAdam

SHAPES = [(16384, 1024), (4096, 4096), (2048, 512), (512, 2048), (256, 256)]


def _best_step_s(opt: torch.optim.Optimizer, steps: int = 5, rounds: int = 5) -> float:
    opt.step()
    opt.step()
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(steps):
            opt.step()
        best = min(best, (time.perf_counter() - t0) / steps)
    return best


def weights() -> None:
    for shape in SHAPES:
        p = torch.nn.Parameter(torch.randn(shape))
        p.grad = torch.randn(shape)
        ref = _best_step_s(torch.optim.AdamW([p], lr=1e-3, fused=True))
        cells = []
        for label, dims in (("none", []), ("fan_out", [0]), ("fan_in", [1])):
            q = torch.nn.Parameter(torch.randn(shape))
            q.grad = torch.randn(shape)
            t = _best_step_s(SlimAdam([("w", q)], lr=1e-3, rules={"w": dims}, fused=True))
            cells.append(f"{label} {t / ref:.2f}x")
        print(f"{shape}: fused AdamW {ref * 1e6:.0f} us; fused SlimAdam / fused AdamW: " + ", ".join(cells))


def rss() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "suites"))
    from test_bench_fused import build_case

    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 4096)  # M_MMAP_THRESHOLD, as the suite's measurement process; heap trimming left on

    def vm() -> tuple[int, int]:
        text = Path("/proc/self/status").read_text()
        return tuple(int(re.search(rf"{k}:\s+(\d+)", text).group(1)) for k in ("VmRSS", "VmHWM"))

    opt = build_case("gpt-4m", "slimadam_fused", "cpu", torch.float32)
    for _ in range(5):
        opt.step()
    before = vm()[0]
    for _ in range(2000):
        opt.step()
    after = vm()[0]
    peaks = []
    for _ in range(10):
        Path("/proc/self/clear_refs").write_text("5")
        base = vm()[0]
        opt.step()
        peaks.append(vm()[1] - base)
    print(f"VmRSS {before} KiB -> {after} KiB after 2000 steps; step peak over start (KiB), 10 steps: {peaks}")


if __name__ == "__main__":
    torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
    {"weights": weights, "rss": rss}[sys.argv[1] if len(sys.argv) > 1 else "weights"]()
