"""What is measured, in which order, within the budget.

Batch-major order: every shape at the first batch size, then every shape at the next.  A budget
that runs out therefore leaves whole batch sizes complete (their totals and verdict stand) and
the rest plainly "not measured: budget", rather than every batch size with holes.  Each batch
size starts with the dense forward of the whole model, the yardstick the layers are compared to.
"""
from __future__ import annotations

import platform
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch

from dstrain.speedcheck.model_source import ModelSpec
from dstrain.speedcheck.paths import (
    FAILED,
    NOT_MEASURED,
    PATHS,
    PathResult,
    ShapeOps,
    csr_unavailable,
    first_line,
    two_four_unavailable,
)
from dstrain.speedcheck.shapes import ModelShapes
from dstrain.speedcheck.timing import Budget, measure

MAX_ALLOWANCE_S = 0.25
"""Most time spent on one measurement's repeats: enough for a stable median of short ops."""
SHARE_FOR_REPEATS = 0.6
"""Of each measurement's even share of the budget left, the part its timed repeats may fill: the rest goes
to what is not timed (first and warm-up calls, weight conversion, the correctness check, random inputs)."""
BUDGET_REASON = "budget"


@dataclass
class ShapeResult:
    """One shape at one batch size: the real dense op, the dense GEMM (convs), and each sparse path."""

    shape: int
    batch: int
    dense_ms: Optional[float] = None
    gemm_ms: Optional[float] = None
    paths: Dict[str, PathResult] = field(default_factory=dict)
    measured: bool = True
    """False when the budget ran out before this shape's dense op was timed."""


@dataclass
class Measurement:
    spec: ModelSpec
    shapes: ModelShapes
    batches: List[int]
    device: torch.device
    dtype: torch.dtype
    sparsity: float
    device_name: str
    path_reasons: Dict[str, Optional[str]]
    """Why a path cannot run at all here (device/dtype), None where it can."""
    forward_ms: Dict[int, Optional[float]] = field(default_factory=dict)
    forward_note: Dict[int, str] = field(default_factory=dict)
    results: List[ShapeResult] = field(default_factory=list)
    budget_s: Optional[float] = None
    warmup: int = 3
    repeats: int = 5


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor})"
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    threads = torch.get_num_threads()
    return f"{model or platform.processor() or 'CPU'}, {threads} torch thread{'s' if threads > 1 else ''}"


def run_check(spec: ModelSpec, shapes: ModelShapes, batches: Sequence[int], device: torch.device, dtype: torch.dtype,
              sparsity: float, budget: Budget, warmup: int = 3, repeats: int = 5,
              log: Callable[[str], None] = lambda _line: None) -> Measurement:
    """Time the forward and every shape at every batch size (see the module docstring for the order).

    ``budget`` is the command's whole time budget (it started before the model was built).
    """
    budget_s = budget.seconds
    reasons = {"2:4": two_four_unavailable(device, dtype), "unstructured": csr_unavailable(device, dtype)}
    m = Measurement(spec, shapes, list(batches), device, dtype, sparsity, device_name(device), reasons,
                    budget_s=budget_s, warmup=warmup, repeats=repeats)
    model = spec.model.to(device=device, dtype=dtype)
    ops: Dict[int, ShapeOps] = {}
    runnable_paths = sum(r is None for r in reasons.values())
    per_unit = 1 + sum((2 if s.kind == "conv2d" else 1) + runnable_paths for s in shapes.shapes)
    left = per_unit * len(batches)

    def allowance() -> float:
        return min(MAX_ALLOWANCE_S, SHARE_FOR_REPEATS * max(budget.remaining(), 0.0) / max(left, 1))

    def timed(fn: Callable[[], object]) -> Optional[float]:
        nonlocal left
        result = measure(fn, device, budget, allowance(), warmup, repeats).ms
        left -= 1
        return result

    with torch.inference_mode():
        for batch in batches:
            log(f"batch {batch}: forward and {len(shapes.shapes)} shapes ({budget.remaining():.0f} s of budget left)"
                if budget_s is not None else f"batch {batch}: forward and {len(shapes.shapes)} shapes")
            m.forward_ms[batch] = _forward(model, spec, batch, device, dtype, budget, timed, m.forward_note)
            for index, shape in enumerate(shapes.shapes):
                result = ShapeResult(index, batch)
                m.results.append(result)
                if budget.exhausted():
                    _not_measured(result)
                    continue
                if index not in ops:
                    ops[index] = ShapeOps(shape, device, dtype, sparsity, reasons["2:4"], reasons["unstructured"])
                op = ops[index]
                try:
                    op.inputs(batch)
                    result.dense_ms = timed(op.dense())
                    if shape.kind == "conv2d" and result.dense_ms is not None:
                        result.gemm_ms = timed(op.dense_gemm())
                except torch.cuda.OutOfMemoryError:
                    _not_measured(result, FAILED, "out of GPU memory for the dense op")
                    op.release()
                    continue
                if result.dense_ms is None or (shape.kind == "conv2d" and result.gemm_ms is None):
                    _not_measured(result)
                    op.release()
                    continue
                for path in PATHS:
                    sparse = op.sparse_op(path)
                    if isinstance(sparse, PathResult):
                        result.paths[path] = sparse
                        continue
                    ms = timed(sparse)
                    result.paths[path] = (PathResult("ok", ms) if ms is not None
                                          else PathResult(NOT_MEASURED, reason=BUDGET_REASON))
                op.release()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return m


def _not_measured(result: ShapeResult, status: str = NOT_MEASURED, reason: str = BUDGET_REASON) -> None:
    result.measured = False
    result.dense_ms = result.gemm_ms = None
    result.paths = {p: PathResult(status, reason=reason) for p in PATHS}


def _forward(model: torch.nn.Module, spec: ModelSpec, batch: int, device: torch.device, dtype: torch.dtype,
             budget: Budget, timed: Callable[[Callable[[], object]], Optional[float]],
             notes: Dict[int, str]) -> Optional[float]:
    if budget.exhausted():
        notes[batch] = BUDGET_REASON
        return None
    try:
        args, kwargs = spec.make_input(batch, device, dtype)
        ms = timed(lambda: model(*args, **kwargs))
    except torch.cuda.OutOfMemoryError:
        notes[batch] = "out of GPU memory"
        return None
    except Exception as err:  # noqa: BLE001 - e.g. a dtype an op of this model lacks on this device
        notes[batch] = f"forward failed: {first_line(err)}"
        return None
    if ms is None:
        notes[batch] = BUDGET_REASON
    return ms
