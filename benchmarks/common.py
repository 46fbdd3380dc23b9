"""What the benchmark files share: devices, synthetic parameters/masks, timing, traffic models."""
from __future__ import annotations

import os
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from shapes import MODELS, Shape, smoke_shapes

SMOKE = os.environ.get("DSTRAIN_BENCH_SMOKE", "0") == "1"
# DSTRAIN_BENCH_DEVICE=cpu: real shapes on the CPU, torch implementations only (Triton needs a GPU).
CPU_RUN = os.environ.get("DSTRAIN_BENCH_DEVICE", "") == "cpu"
DEVICE = torch.device("cpu" if (SMOKE or CPU_RUN) else "cuda")
KEEP_FRACTION = 0.1  # 90% random sparsity
ROUNDS = 3 if SMOKE else (7 if CPU_RUN else 30)


def model_shapes(model: str) -> List[Shape]:
    return smoke_shapes() if SMOKE else MODELS[model]()


def make_params(shapes: Sequence[Shape], seed: int = 0, with_grads: bool = True) -> List[nn.Parameter]:
    """fp32 parameters, with fp32 grads already set (as after a backward pass) if ``with_grads``."""
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    params = []
    for s in shapes:
        p = nn.Parameter(torch.randn(s, device=DEVICE, generator=gen))
        if with_grads:
            p.grad = torch.randn(s, device=DEVICE, generator=gen)
        params.append(p)
    return params


def make_masks(params: Sequence[torch.Tensor], seed: int = 1) -> List[Optional[torch.Tensor]]:
    """90% random bool masks on weight matrices/conv kernels; biases and norms stay dense (None)."""
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    return [torch.rand(p.shape, device=DEVICE, generator=gen) < KEEP_FRACTION if p.dim() >= 2 else None
            for p in params]


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def synced(fn: Callable[[], None]) -> Callable[[], None]:
    """What pytest-benchmark times: the step and a device synchronisation."""
    def run() -> None:
        fn()
        sync()
    return run


def median_seconds(fn: Callable[[], None], rounds: int = ROUNDS, warmup: int = 3) -> float:
    """Median wall time of ``fn`` (synchronised); used to time the baseline inside other tests."""
    run = synced(fn)
    for _ in range(warmup):
        run()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def step_bytes(params: Sequence[torch.Tensor], masks: Sequence[Optional[torch.Tensor]], optimizer: str,
               mask_bits: int = 8) -> int:
    """Bytes a fused step must move at minimum (fp32 everything, masks at ``mask_bits`` per element).

    SGD-momentum: read p, g, buf; write p, buf.  AdamW: read p, g, m, v; write p, m, v.
    Plus one mask read per masked element (a dense step has no masks).
    """
    per_elem = {"sgd": 5 * 4, "adamw": 7 * 4}[optimizer]
    total = sum(p.numel() for p in params) * per_elem
    total += sum(m.numel() for m in masks if m is not None) * mask_bits // 8
    return total


COPY_ELEMENTS = 1 << 20 if SMOKE else (64 << 20 if DEVICE.type == "cpu" else 256 << 20)
"""fp32 elements of the bandwidth probe: 256 MiB on a CPU, 1 GiB on a GPU, far beyond any cache."""
_COPY_GBPS: List[float] = []


def copy_gbps() -> float:
    """Measured copy bandwidth, GB/s (read + write bytes / median time of ``dst.copy_(src)``).

    Measured once per run, in the same process and under the same load as the
    optimizer steps, so "% of copy bandwidth" compares like with like.  A fused
    step is a streaming read/write pass, so a large copy is its speed of light.
    """
    if not _COPY_GBPS:
        src = torch.rand(COPY_ELEMENTS, device=DEVICE)
        dst = torch.empty_like(src)
        seconds = median_seconds(lambda: dst.copy_(src))
        _COPY_GBPS.append(2 * src.numel() * src.element_size() / seconds / 1e9)
        del src, dst
    return _COPY_GBPS[0]


def paired_ratio(reference: Callable[[], None], candidate: Callable[[], None], pairs: int = 9) -> float:
    """Median over back-to-back pairs of candidate time / reference time.

    On a shared machine the load changes from one benchmark to the next; timing the
    two steps alternately and taking the median of the per-pair ratios keeps a load
    change from landing on one side of the comparison only.
    """
    ref, cand = synced(reference), synced(candidate)
    ref(), cand()
    ratios = []
    for _ in range(pairs):
        t0 = time.perf_counter()
        ref()
        t1 = time.perf_counter()
        cand()
        t2 = time.perf_counter()
        ratios.append((t2 - t1) / (t1 - t0))
    ratios.sort()
    return ratios[len(ratios) // 2]


def record(benchmark, *, bytes_moved: int, baseline_s: Optional[float], baseline_label: str, label: str,
           **extra) -> Dict:
    """Per-step time, effective GB/s, % of the measured copy bandwidth and speed-up vs the baseline
    (both timed in the same run), into extra_info."""
    own = benchmark.stats.stats.median
    info = dict(label=label, median_ms=own * 1e3, bytes_moved=bytes_moved, gbps=bytes_moved / own / 1e9, **extra)
    if bytes_moved:
        info["copy_gbps"] = copy_gbps()
        info["pct_of_copy"] = 100 * info["gbps"] / info["copy_gbps"]
    if baseline_s is not None:
        info["baseline"] = baseline_label
        info["baseline_ms"] = baseline_s * 1e3
        info["speedup_vs_baseline"] = baseline_s / own
    benchmark.extra_info.update(info)
    return info


def cuda_name() -> str:
    """The machine the figures belong to (GPU name, or CPU model and core count)."""
    if DEVICE.type == "cuda":
        return torch.cuda.get_device_name()
    if SMOKE:
        return "cpu (smoke)"
    model = "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
