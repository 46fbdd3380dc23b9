"""Learning-rate schedules as pure functions of the optimizer step.

``lr(t)`` for step t: linear warm-up from ``warmup_start_factor·base`` to ``base``
over ``warmup`` steps, then the decay shape over the remaining steps.  With
``restarts`` (LR rewinding), the post-warm-up shape restarts at each given step:
fine-tuning after a pruning step then sees the high LR again.  By default each restart
decays towards ``min_lr`` at the end of training; with ``cyclic`` every segment
(warm-up end -> first restart, restart -> next restart, last restart -> end) runs its
whole shape and reaches ``min_lr`` at its own end, as oBERT's ``cyclic_linear`` does.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Tuple


@dataclass(frozen=True)
class LRSchedule:
    base_lr: float
    total: int
    shape: str = "cosine"  # cosine | linear | step | constant
    warmup: int = 0
    warmup_start_factor: float = 0.0
    min_lr: float = 0.0
    milestones: Tuple[int, ...] = ()
    gamma: float = 0.1
    restarts: Tuple[int, ...] = field(default=())
    cyclic: bool = False

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            start = self.base_lr * self.warmup_start_factor
            return start + (self.base_lr - start) * step / self.warmup
        begin, end = self.warmup, self.total
        if self.restarts:
            i = bisect.bisect_right(self.restarts, step)
            if i > 0:
                begin = max(begin, self.restarts[i - 1])
            if self.cyclic and i < len(self.restarts):
                end = self.restarts[i]
        return self._decay(step, begin, end)

    def _decay(self, step: int, begin: int, end: int) -> float:
        span = max(end - begin, 1)
        frac = min(max((step - begin) / span, 0.0), 1.0)
        if self.shape == "constant":
            return self.base_lr
        if self.shape == "linear":
            return self.min_lr + (self.base_lr - self.min_lr) * (1.0 - frac)
        if self.shape == "cosine":
            return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * frac))
        if self.shape == "step":
            # Milestones are absolute steps; a restart re-bases them on the restart step.
            offset = begin - self.warmup
            passed = sum(1 for m in self.milestones if step - offset >= m)
            return self.base_lr * self.gamma**passed
        raise ValueError(f"unknown LR shape {self.shape!r}")
