"""Triton kernels that fuse mask application into optimizer steps, and fast mask selection.

Public entry points (used by :mod:`dstrain.optim` and :mod:`dstrain.pruning`):

- ``triton_available() -> bool``
- ``fused_masked_sgd(params, grads, momentum_buffers, masks, *, lr, momentum, dampening,
  nesterov, weight_decay, maximize)`` — same contract as ``dstrain.optim.functional.masked_sgd``
- ``fused_masked_adamw(params, grads, exp_avgs, exp_avg_sqs, steps, masks, *, lr, beta1, beta2,
  eps, weight_decay, maximize)`` — same contract as ``dstrain.optim.functional.masked_adamw``
- ``kth_smallest_abs(tensors, k) -> float`` — exact k-th smallest |w| over many tensors
"""
from __future__ import annotations

import functools


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - import failure depends on the machine
        return False
    return True


def fused_masked_sgd(*args, **kwargs):  # replaced by the real kernel module
    raise NotImplementedError("fused_masked_sgd: Triton kernel not built yet; use backend='torch'")


def fused_masked_adamw(*args, **kwargs):  # replaced by the real kernel module
    raise NotImplementedError("fused_masked_adamw: Triton kernel not built yet; use backend='torch'")
