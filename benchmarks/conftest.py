"""Benchmark setup: CUDA only, unless DSTRAIN_BENCH_SMOKE=1.

The figures only mean something on a GPU, so without CUDA every benchmark is
skipped with a reason.  DSTRAIN_BENCH_SMOKE=1 instead runs the same code on the CPU
with tiny shapes and the Triton interpreter, to check that it works (the numbers
are then meaningless).
"""
from __future__ import annotations

import os

SMOKE = os.environ.get("DSTRAIN_BENCH_SMOKE", "0") == "1"
if SMOKE:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports kernels

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if SMOKE or torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (set DSTRAIN_BENCH_SMOKE=1 to smoke-test on the CPU)")
    for item in items:
        item.add_marker(skip)
