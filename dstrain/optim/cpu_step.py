"""The C++ CPU path of a masked optimizer step with its host work done once per tensor list, not per step.

Why: the fused C++ step (:mod:`dstrain.optim.cpu_kernels`) runs at the speed of torch's
dense fused step, and the plain Python around it (state lookups, a new ``state["step"]``
tensor and an ``.item()`` per parameter, mask storages, argument lists) is per-parameter
host work that grows with the tensor count and with machine load; on the idle 2-core
machine it was worth up to ~0.6 ms of a ~9 ms ResNet50 AdamW step.  A :class:`CpuPlan` keeps, per param group, what
depends only on *which* tensors are stepped: the stepped parameters, their state
tensors (checked for replacement each step, see
:mod:`~dstrain.optim.prepared_state`), AdamW's step counters and the mask storages.
A step reads every ``.grad`` and every mask through C-level ``map``, checks identities,
and calls the kernel once.  Mask *contents* may change freely (the registry updates
masks in place); new mask tensors, a gradient appearing or vanishing, masking switched
on or off, or replaced state rebuild the plan.
"""
from __future__ import annotations

from typing import Any, List, Optional

from torch import Tensor

from dstrain.optim.prepared_state import PreparedGroup, StateSnapshot, StepCounters


class CpuPlan(PreparedGroup):
    """One param group's prepared C++ step (see the module docstring)."""

    def __init__(self, params: List[Tensor], masks: Optional[List[Any]], present: List[int],
                 counters: Optional[StepCounters], snapshot: StateSnapshot, flags_key: tuple) -> None:
        from dstrain.kernels.bitmask import mask_storage

        super().__init__(params, masks, present, flags_key)
        self.stepped = [params[i] for i in present]
        self.stepped_masks: List[Any] = [None] * len(present) if masks is None else [masks[i] for i in present]
        self.mask_storages = list(map(mask_storage, self.stepped_masks))
        self.counters = counters
        self.snapshot = snapshot
        self.not_first = [False] * len(present)  # SGD's "allocate this momentum buffer" flags: never, once planned
