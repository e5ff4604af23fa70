"""pytest-benchmark micro-benchmarks of the hot paths (``benchmarks/test_bench_*.py``).

Run them with ``pytest benchmarks/ --benchmark-only`` (or ``--benchmark-disable`` to run each
once as a smoke test). They are not part of the test suite (``pytest tests``); a plain ``pytest``
that happens to collect this folder skips them, saying how to run them.

Shapes are small enough for a 2-core CPU; on a GPU the same benchmarks run on CUDA tensors too.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.common import synchronize

_RUN_FLAGS = ("benchmark_only", "benchmark_enable", "benchmark_disable")


def pytest_collection_modifyitems(config, items):
    if any(config.getoption(flag, default=False) for flag in _RUN_FLAGS):
        return
    skip = pytest.mark.skip(reason="micro-benchmarks: run with `pytest benchmarks/ --benchmark-only`")
    here = str(config.rootpath / "benchmarks")
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(skip)


def _devices():
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    return devices


@pytest.fixture(params=_devices())
def device(request) -> torch.device:
    """Every available device type (CPU always, CUDA when present)."""
    return torch.device(request.param)


@pytest.fixture
def run_synced(benchmark):
    """``run_synced(fn, device)``: benchmark ``fn`` with the device synchronised after each call,
    so that asynchronous GPU work is inside the measured time."""

    def run(fn, device):
        def synced():
            out = fn()
            synchronize(device)
            return out

        synced()  # warm-up outside the measurement (kernel compilation, caches)
        return benchmark(synced)

    return run
