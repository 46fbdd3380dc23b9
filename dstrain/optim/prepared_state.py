"""Optimizer state as a prepared step keeps it: cached state tensors, and AdamW's step counters in one buffer.

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
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import Tensor


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
