"""Benchmark setup: CUDA, unless DSTRAIN_BENCH_SMOKE=1 or DSTRAIN_BENCH_DEVICE=cpu.

The figures only mean something on a GPU, so without CUDA every benchmark is
skipped with a reason.  DSTRAIN_BENCH_SMOKE=1 instead runs the same code on the CPU
with tiny shapes and the Triton interpreter, to check that it works (the numbers
are then meaningless).  DSTRAIN_BENCH_DEVICE=cpu runs the real shapes on the CPU
for the PyTorch implementations only.
"""
from __future__ import annotations

import os

SMOKE = os.environ.get("DSTRAIN_BENCH_SMOKE", "0") == "1"
if SMOKE:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports dstrain.kernels

import pytest  # noqa: E402
import torch  # noqa: E402


CPU_RUN = os.environ.get("DSTRAIN_BENCH_DEVICE", "") == "cpu"


def pytest_collection_modifyitems(config, items):
    if CPU_RUN:
        interpreted = pytest.mark.skip(reason="Triton on the CPU is the interpreter: its time means nothing")
        for item in items:
            if "triton" in item.name:
                item.add_marker(interpreted)
        return
    if SMOKE or torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (set DSTRAIN_BENCH_SMOKE=1 to smoke-test on the CPU)")
    for item in items:
        item.add_marker(skip)
