"""AdamW's per-step scalars, computed in one place for every backend.

Why one function: the PyTorch reference, the C++ CPU step and the Triton kernels must
agree bit for bit on the step size and the bias correction, and they do only if all
three take the same double-precision values.  Plain Python, no Triton: the reference
path imports it too.
"""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple


def adamw_step_scalars(lr: float, beta1: float, beta2: float, step: int) -> Tuple[float, float]:
    """(-step_size, sqrt(bias_correction2)) for step number ``step`` (this step included, so >= 1)."""
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    return -(lr / bias_correction1), math.sqrt(bias_correction2)


def adamw_scalars_per_tensor(lr: float, beta1: float, beta2: float,
                             steps: Sequence[int]) -> Tuple[List[float], List[float]]:
    """:func:`adamw_step_scalars` for each tensor's step count, computed once per distinct count."""
    cache = {}
    neg_step_sizes, bc2_sqrts = [], []
    for i, step in enumerate(steps):
        step = int(step)
        if step not in cache:
            if step < 1:
                raise ValueError(f"steps[{i}]={step}: the step count includes this step, so it must be >= 1")
            cache[step] = adamw_step_scalars(lr, beta1, beta2, step)
        neg, bc2 = cache[step]
        neg_step_sizes.append(neg)
        bc2_sqrts.append(bc2)
    return neg_step_sizes, bc2_sqrts
