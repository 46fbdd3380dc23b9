"""What a prepared optimizer step keeps: the tensors it covers, their state, and AdamW's step counters.

Why: a prepared step (the Triton :class:`~dstrain.optim.triton_step.GroupPlan`, the
C++ :class:`~dstrain.optim.cpu_step.CpuPlan`) skips the per-parameter Python of an
ordinary step, so it must hold the state tensors itself and notice when somebody else
replaces them.  ``load_state_dict`` drops plans through a hook, but DeepSpeed's ZeRO
checkpoint restore also assigns ``optimizer.state[p][key]`` directly
(``_restore_base_optimizer_state``), so a plan re-checks the identity of every state
tensor each step: C-level ``map`` calls, ~10 microseconds for 200 tensors, instead of
stepping stale buffers.
"""
from __future__ import annotations

import operator
from itertools import repeat
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import Tensor

GRAD = operator.attrgetter("grad")
"""``map(GRAD, params)``: every parameter's ``.grad`` without a Python frame per parameter."""


def same_objects(a: Sequence[Any], b: Sequence[Any]) -> bool:
    """True if both sequences hold the very same objects in the same order."""
    return len(a) == len(b) and all(map(operator.is_, a, b))


class StateSnapshot:
    """The state tensors of the stepped parameters, per key, as they were when the plan was built."""

    def __init__(self, state: Dict[Tensor, dict], params: List[Tensor], keys: Sequence[str]) -> None:
        self.state = state
        self.params = params
        self.getters = {key: operator.itemgetter(key) for key in keys}
        dicts = list(map(state.__getitem__, params))
        self.tensors: Dict[str, List[Tensor]] = {key: list(map(get, dicts)) for key, get in self.getters.items()}

    def unchanged(self) -> bool:
        """False if a state dict or one of its tensors was replaced since (then the plan is rebuilt)."""
        try:
            dicts = list(map(self.state.__getitem__, self.params))
            return all(same_objects(list(map(get, dicts)), self.tensors[key]) for key, get in self.getters.items())
        except KeyError:
            return False


class StepCounters:
    """AdamW's per-tensor step counts: one float32 buffer whose 0-d views are each ``state["step"]``.

    torch's state_dict format is kept (a 0-d float32 tensor per parameter), one ``add_``
    counts a step for every tensor, and the kernels get the count from a host integer:
    no ``.item()`` per parameter (a device sync on a GPU, a Python call on the CPU).
    """

    def __init__(self, states: List[dict]) -> None:
        counts = [float(s["step"]) for s in states]
        self.buffer = torch.tensor(counts, dtype=torch.float32)
        self.views = [self.buffer[i] for i in range(len(states))]
        for s, view in zip(states, self.views):
            s["step"] = view
        ints = [int(c) for c in counts]
        self.step: Optional[int] = None  # the shared count, while every tensor has the same
        self.steps: Optional[List[int]] = None  # per-tensor counts when they differ
        if len(set(ints)) <= 1:
            self.step = ints[0] if ints else 0
        else:
            self.steps = ints

    def count(self) -> None:
        """One more step for every tensor: one ``add_`` on the buffer, host counts in Python ints."""
        self.buffer.add_(1)
        if self.steps is None:
            self.step += 1
        else:
            self.steps = [s + 1 for s in self.steps]

    def per_tensor(self) -> List[int]:
        return [self.step] * len(self.views) if self.steps is None else self.steps


class PreparedGroup:
    """One param group as a prepared step planned it; the Triton and C++ plans extend it.

    A plan covers these parameters (identity), these mask tensors (or none: masking off),
    the hyperparameters of ``flags_key``, the tensors that had a gradient (``present``),
    and the state of :attr:`snapshot`.  :meth:`planned_grads` checks all of that per
    step with C-level ``map`` calls and hands back the gradients to step.
    """

    def __init__(self, params: List[Tensor], masks: Optional[List[Any]], present: List[int],
                 flags_key: tuple) -> None:
        self.params = list(params)
        self.masks = masks
        self.present = present
        self.all_present = len(present) == len(params)
        self.flags_key = flags_key
        self.counters: Optional[StepCounters] = None  # AdamW's step counts (set by the optimizer)
        self.snapshot: Optional[StateSnapshot] = None  # the state tensors the plan steps

    def planned_grads(self, params: List[Tensor], grads: List[Optional[Tensor]], masks: Optional[List[Any]],
                      flags_key: tuple) -> Optional[List[Tensor]]:
        """This step's gradients of the planned tensors, or None if the plan no longer fits."""
        if flags_key != self.flags_key or not same_objects(params, self.params):
            return None
        if (masks is None) != (self.masks is None) or (masks is not None and not same_objects(masks, self.masks)):
            return None
        if self.snapshot is not None and not self.snapshot.unchanged():
            return None
        if self.all_present:
            stepped = grads
        elif [i for i, g in enumerate(grads) if g is not None] == self.present:
            stepped = [grads[i] for i in self.present]
        else:
            return None
        return stepped if all(map(operator.is_not, stepped, repeat(None))) else None  # type: ignore[return-value]
