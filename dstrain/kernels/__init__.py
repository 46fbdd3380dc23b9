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
need CUDA tensors; with ``TRITON_INTERPRET=1`` set before they are first used they run on CPU
tensors under the Triton interpreter (how the tests run).

Importing this package imports neither Triton nor the kernels: the Triton entry points are
loaded on first use (module ``__getattr__``).  Why: the kernels read their settings
(``TRITON_INTERPRET``, ``DSTRAIN_AUTOTUNE``) when they are defined, and ``import dstrain``
(which reaches the pure-Python helpers here, e.g. :mod:`.adamw_scalars`) must leave a command
such as ``dstrain selfcheck --quick`` free to set them first.

Modules: ``masked_sgd``, ``masked_adamw`` (kernels + wrappers), ``multi_tensor``
(work lists / pointer tables), ``bitmask``, ``radix_select`` (torch selector),
``select`` (Triton selector + dispatch), ``validate``, ``_runtime``, ``_tl``.
"""
from __future__ import annotations

import functools
import importlib
from typing import Any

from .bitmask import BitMask, pack_mask, unpack_mask
from .radix_select import kth_smallest_abs_torch

_TRITON_ENTRY_POINTS = {"fused_masked_sgd": ".masked_sgd", "fused_masked_adamw": ".masked_adamw",
                        "kth_smallest_abs": ".select", "kth_smallest_abs_triton": ".select"}


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - import failure depends on the machine
        return False
    return True


def _without_triton(name: str) -> Any:  # pragma: no cover - triton is a dependency
    if name == "kth_smallest_abs":
        return kth_smallest_abs_torch

    def unavailable(*args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(f"{name} needs Triton, which failed to import; use backend='torch'")

    return unavailable


def __getattr__(name: str) -> Any:
    if name not in _TRITON_ENTRY_POINTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if triton_available():
        value = getattr(importlib.import_module(_TRITON_ENTRY_POINTS[name], __name__), name)
    else:
        value = _without_triton(name)
    globals()[name] = value
    return value


__all__ = [
    "triton_available", "fused_masked_sgd", "fused_masked_adamw", "kth_smallest_abs", "kth_smallest_abs_triton",
    "kth_smallest_abs_torch", "BitMask", "pack_mask", "unpack_mask",
]
