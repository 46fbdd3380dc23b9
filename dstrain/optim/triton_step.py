"""The Triton path of a masked optimizer step, with the host work done once per tensor list, not per step.

Why: at ~200 parameters, per-parameter Python in a step (state lookups, argument
checks, pointer tables, an ``.item()`` per step counter) costs milliseconds, as much
as the fused kernels' whole GPU time for BERT-base.  So a :class:`GroupPlan` keeps,
per param group, everything that depends only on *which* tensors are stepped (checked
arguments, launch groups, address tables, step counters), and a step does only:

* read every parameter's ``.grad``, mask (``mask_source``) and data pointer, and every
  gradient's data pointer, with C-level ``map`` (no per-parameter Python frames);
* compare them with the plan's (identity for parameters and masks, addresses for
  parameters and gradients): equal means the tables are still right;
* when only gradient addresses moved (``zero_grad(set_to_none=True)``), check the
  moved gradients and rewrite the gradient row of the tables (one small copy);
  anything else (new parameters, new mask tensors, a gradient appearing or vanishing,
  a flag-changing hyperparameter, masking switched on/off) rebuilds the plan;
* compute the step's scalars once and launch one kernel per launch group.

Step counters (AdamW) are a :class:`~dstrain.optim.prepared_state.StepCounters`: no
``.item()`` and no device synchronisation.  A plan is dropped when the optimizer's
state is loaded (``load_state_dict``), its mask source changes, or a group takes the
PyTorch path, and rebuilt when a state tensor was replaced behind its back
(:class:`~dstrain.optim.prepared_state.StateSnapshot`).  Mask *contents* may change freely (the registry updates masks in
place): the kernels read them on every step.
"""
from __future__ import annotations

from typing import Any, List, Optional

from torch import Tensor

from dstrain.optim.prepared_state import PreparedGroup

_PTR = Tensor.data_ptr


class GroupPlan(PreparedGroup):
    """One param group's prepared Triton step (see the module docstring)."""

    def __init__(self, group: dict, params: List[Tensor], all_masks: Optional[List[Any]], present: List[int],
                 grads: List[Tensor], kernel_plan: Any, flags_key: tuple) -> None:
        super().__init__(params, all_masks, present, flags_key)
        self.group = group
        self.p_addrs = list(map(_PTR, params))
        self.g_addrs = list(map(_PTR, grads))
        self.kernel_plan = kernel_plan

    def matches(self, params: List[Tensor], grads: List[Optional[Tensor]], masks: Optional[List[Any]],
                flags_key: tuple) -> bool:
        """True if the plan can run this step (patching moved gradient addresses in place)."""
        if self.kernel_plan.stale:
            return False
        stepped = self.planned_grads(params, grads, masks, flags_key)
        if stepped is None or list(map(_PTR, params)) != self.p_addrs:
            return False
        g_addrs = list(map(_PTR, stepped))
        if g_addrs != self.g_addrs:
            moved = [i for i, (a, b) in enumerate(zip(g_addrs, self.g_addrs)) if a != b]
            planned = [params[i] for i in self.present] if not self.all_present else params
            if not self.kernel_plan.set_grads(planned, stepped, moved, g_addrs):
                return False
            self.g_addrs = g_addrs
        return True
