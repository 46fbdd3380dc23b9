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


def record(benchmark, *, bytes_moved: int, baseline_s: Optional[float], baseline_label: str, label: str,
           **extra) -> Dict:
    """Per-step time, effective GB/s and speed-up vs the baseline (timed in the same run), into extra_info."""
    own = benchmark.stats.stats.median
    info = dict(label=label, median_ms=own * 1e3, bytes_moved=bytes_moved, gbps=bytes_moved / own / 1e9, **extra)
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
