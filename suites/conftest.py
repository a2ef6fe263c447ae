"""Options and fixtures shared by the benchmark suites (pytest-benchmark).

    pytest suites/ --benchmark-json=results/bench.json                 # default cases, a few minutes on 2 CPUs
    pytest suites/ --slimbench-large --benchmark-json=...              # + GPT-2-small shapes, full tiny tasks
    pytest suites/ --slimbench-device cuda --benchmark-json=...        # on a GPU (default: cuda if available)
    pytest suites/ --slimbench-threads 0 ...                           # torch's thread count (default: 1)

Several suites live here (step time, short training, fused kernels); each adds its own fixtures below
its own heading rather than replacing this file.
"""
from __future__ import annotations

import pytest
import torch

# ---------------------------------------------------------------------------------------------------------
# options and the `large` marker (step time / training suites)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("slimbench", "slimbench benchmark suites")
    group.addoption("--slimbench-large", action="store_true", default=False,
                    help="also run the large cases (marker 'large': GPT-2-small shapes, full tiny-task runs)")
    group.addoption("--slimbench-device", default=None,
                    help="device for the suites: cpu, cuda, cuda:1 (default: cuda if available, else cpu)")
    group.addoption("--slimbench-dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                    help="parameter dtype of the step-time cases (default: float32)")
    group.addoption("--slimbench-threads", type=int, default=1,
                    help="torch threads for the whole session (default: 1; 0 = torch's default); "
                         "recorded in extra_info")
    group.addoption("--slimbench-gpu-sizes", action="store_true", default=False,
                    help="also run the fused suite's ~0.1B/0.5B/1B cases (marker 'gpu_size'; tens of GB of "
                         "device memory, meant for suites/gpu_check.sh)")
    group.addoption("--slimbench-runs-dir", default=None,
                    help="also save every training-suite run as a slimbench.run file here (for the report's curves)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "large: big benchmark case, run only with --slimbench-large (or -m large)")
    config.addinivalue_line("markers", "gpu_size: ~0.1-1B fused-suite case, run only with --slimbench-gpu-sizes")
    # One thread by default: on shared cores, OpenMP workers of small CPU kernels wait on each other and
    # a 2-thread step measured here ran 5-20x slower than a 1-thread one, in bursts; pinned, runs are
    # comparable across machines, and training losses are reproducible (reduction order).
    threads = config.getoption("--slimbench-threads", default=None)
    if threads is None:  # options not registered: this conftest was not an initial one
        return
    if threads < 0:
        raise pytest.UsageError(f"--slimbench-threads must be >= 0, got {threads}")
    if threads:
        torch.set_num_threads(threads)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The GPU sizes are opt-in only by their own option: `-m large` must not start a 1B case on a laptop.
    gpu_sizes = config.getoption("--slimbench-gpu-sizes", default=False)
    large = config.getoption("--slimbench-large") or "large" in (config.getoption("markexpr") or "")
    skip_large = pytest.mark.skip(reason="large case: run with --slimbench-large")
    skip_gpu = pytest.mark.skip(reason="GPU-size case: run with --slimbench-gpu-sizes")
    for item in items:
        if "gpu_size" in item.keywords and not gpu_sizes:
            item.add_marker(skip_gpu)
        elif "large" in item.keywords and not large:
            item.add_marker(skip_large)


@pytest.fixture(scope="session")
def bench_device(pytestconfig: pytest.Config) -> torch.device:
    """The suites' device; an explicit cuda request without a GPU is an error, not a silent CPU run."""
    name = pytestconfig.getoption("--slimbench-device")
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError(f"--slimbench-device {name}: torch.cuda.is_available() is False")
    return dev


@pytest.fixture(scope="session")
def bench_dtype(pytestconfig: pytest.Config) -> torch.dtype:
    return getattr(torch, pytestconfig.getoption("--slimbench-dtype"))


@pytest.fixture(scope="session")
def runs_dir(pytestconfig: pytest.Config) -> str | None:
    return pytestconfig.getoption("--slimbench-runs-dir")
