"""Triton kernels that fuse mask application into optimizer steps, and fast mask selection.

Public entry points (used by :mod:`dstrain.optim` and :mod:`dstrain.sparsity.magnitude`):

- ``triton_available() -> bool``
- ``fused_masked_sgd(params, grads, momentum_buffers, masks, *, lr, momentum, dampening,
  nesterov, weight_decay, maximize)`` — same contract as ``dstrain.optim.functional.masked_sgd``
- ``fused_masked_adamw(params, grads, exp_avgs, exp_avg_sqs, steps, masks, *, lr, beta1, beta2,
  eps, weight_decay, maximize)`` — same contract as ``dstrain.optim.functional.masked_adamw``
- ``kth_smallest_abs(tensors, k) -> float`` — exact k-th smallest |w| over many tensors
- ``pack_mask(bool_tensor) -> BitMask`` / ``unpack_mask(bitmask) -> bool tensor`` — 1-bit masks,
  accepted by both fused optimizers wherever a bool/uint8 mask is

Each fused optimizer step is one multi-tensor launch per (device, grad dtype, mask
format) group, not one per parameter (:mod:`dstrain.kernels.multi_tensor`).  Compiled kernels
need CUDA tensors; with ``TRITON_INTERPRET=1`` set before this package is imported
they run on CPU tensors under the Triton interpreter (how the tests run).

Modules: ``masked_sgd``, ``masked_adamw`` (kernels + wrappers), ``multi_tensor``
(work lists / pointer tables), ``bitmask``, ``radix_select`` (torch selector),
``select`` (Triton selector + dispatch), ``validate``, ``_runtime``, ``_tl``.
"""
from __future__ import annotations

import functools

from .bitmask import BitMask, pack_mask, unpack_mask
from .radix_select import kth_smallest_abs_torch


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - import failure depends on the machine
        return False
    return True


if triton_available():
    from .masked_adamw import fused_masked_adamw
    from .masked_sgd import fused_masked_sgd
    from .select import kth_smallest_abs, kth_smallest_abs_triton
else:  # pragma: no cover - triton is a dependency; kept so importing dstrain.kernels never fails
    kth_smallest_abs = kth_smallest_abs_torch

    def fused_masked_sgd(*args, **kwargs):
        raise NotImplementedError("fused_masked_sgd needs Triton, which failed to import; use backend='torch'")

    def fused_masked_adamw(*args, **kwargs):
        raise NotImplementedError("fused_masked_adamw needs Triton, which failed to import; use backend='torch'")


__all__ = [
    "triton_available", "fused_masked_sgd", "fused_masked_adamw", "kth_smallest_abs",
    "kth_smallest_abs_torch", "BitMask", "pack_mask", "unpack_mask",
]
