"""Timing one callable: warm-up, then the median of repeats, inside a total time budget.

Why adaptive: a 768x768 GEMM at batch 1 takes microseconds and a ResNet50 forward at batch 256
on a CPU takes seconds, and the whole check has one budget.  Each measurement gets an
allowance; the number of calls per repeat is chosen from the time of one warm call so that
the repeats fill about that allowance.  On CUDA, events around a run of calls time the GPU
work itself (launches are asynchronous); on the CPU, ``time.perf_counter`` does.  A callable
whose single call already needs more than the budget has left is not started again, and the
caller says "not measured: budget" instead of a number.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, List, Optional

import torch


class Budget:
    """Wall-clock seconds left for the whole check (``None``: unlimited)."""

    def __init__(self, seconds: Optional[float]) -> None:
        self.seconds = seconds
        self.deadline = None if seconds is None else time.monotonic() + seconds

    def remaining(self) -> float:
        return math.inf if self.deadline is None else self.deadline - time.monotonic()

    def exhausted(self) -> bool:
        return self.remaining() <= 0


@dataclass
class Timing:
    ms: Optional[float]
    """Median milliseconds per call; None when the budget ran out first."""
    calls_per_repeat: int = 0
    repeats: int = 0


def synchronizer(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def measure(fn: Callable[[], object], device: torch.device, budget: Budget, allowance_s: float,
            warmup: int = 3, repeats: int = 5) -> Timing:
    """Median ms per call of ``fn`` over ``repeats`` runs of N calls each, after ``warmup`` calls.

    N is the largest count (at least 1) for which all repeats fit ``allowance_s``, judged by
    the last warm-up call; the first call (allocator, kernel selection, lazy init) is never timed.
    """
    sync = synchronizer(device)
    start = time.perf_counter()
    fn()
    sync()
    first = time.perf_counter() - start
    if first * (warmup + repeats) > budget.remaining():
        return Timing(None)
    one = first
    for _ in range(max(0, warmup - 1)):
        start = time.perf_counter()
        fn()
        sync()
        one = time.perf_counter() - start
    calls = max(1, min(100_000, int(allowance_s / (max(one, 1e-7) * max(repeats, 1)))))
    times: List[float] = []
    for _ in range(max(repeats, 1)):
        times.append(_run(fn, calls, device, budget))
        if budget.exhausted():
            break
    return Timing(statistics.median(times), calls, len(times))


def _run(fn: Callable[[], object], calls: int, device: torch.device, budget: Budget) -> float:
    """Milliseconds per call over ``calls`` back-to-back calls.

    On the CPU a run stops early once the budget is spent: on a loaded machine one call can
    stall for far longer than the warm-up suggested, and the budget is a promise to the user.
    """
    if device.type == "cuda":
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return float(begin.elapsed_time(end)) / calls
    start = time.perf_counter()
    done = 0
    while done < calls:
        fn()
        done += 1
        if budget.exhausted():
            break
    return (time.perf_counter() - start) * 1e3 / done
