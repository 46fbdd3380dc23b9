"""Sparsity schedules as pure functions of the optimizer step.

Every schedule answers, for step ``t`` (the number of optimizer steps already
taken): the target sparsity, whether step ``t`` runs compressed (masked) or
dense, and whether masks are recomputed just before it.  All positions are in
optimizer steps here; the recipe converts epochs to steps once it knows the
loader length.

The steps at which masks change (:meth:`SparsitySchedule.update_ranges`) are computed in
closed form, never by walking the steps: a run may have billions of them, and LR rewinding
needs the list before the first step.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import List, Sequence


class SparsitySchedule(abc.ABC):
    @abc.abstractmethod
    def target(self, step: int) -> float:
        """Sparsity the masks should have while running step ``step``."""

    @abc.abstractmethod
    def is_compressed(self, step: int) -> bool:
        """Whether masks constrain step ``step`` (False = dense phase)."""

    @abc.abstractmethod
    def updates_mask(self, step: int) -> bool:
        """Whether masks are recomputed right before step ``step``."""

    @abc.abstractmethod
    def update_ranges(self, total_steps: int) -> Sequence[range]:
        """The steps t in [0, total_steps) with ``updates_mask(t)``, as ascending disjoint ranges.

        Ranges, not a list, so that counting them costs nothing however long the run.
        """

    def update_steps(self, total_steps: int) -> List[int]:
        """Every step in [0, total_steps) before which masks are recomputed (:meth:`count_updates` first
        if the run may be long: this list has one entry per update)."""
        return [t for r in self.update_ranges(total_steps) for t in r]

    def count_updates(self, total_steps: int) -> int:
        """How many mask updates a run of ``total_steps`` steps makes, in constant time."""
        return sum(len(r) for r in self.update_ranges(total_steps))


@dataclass(frozen=True)
class Dense(SparsitySchedule):
    """No pruning at all (the dense baseline)."""

    def target(self, step: int) -> float:
        return 0.0

    def is_compressed(self, step: int) -> bool:
        return False

    def updates_mask(self, step: int) -> bool:
        return False

    def update_ranges(self, total_steps: int) -> Sequence[range]:
        return ()


@dataclass(frozen=True)
class Constant(SparsitySchedule):
    """Prune once before the first step (at initialisation) and keep the mask fixed."""

    sparsity: float

    def target(self, step: int) -> float:
        return self.sparsity

    def is_compressed(self, step: int) -> bool:
        return True

    def updates_mask(self, step: int) -> bool:
        return step == 0

    def update_ranges(self, total_steps: int) -> Sequence[range]:
        return (range(0, min(1, total_steps)),)


@dataclass(frozen=True)
class OneShot(SparsitySchedule):
    """Dense until ``at``, then prune once to ``sparsity`` and keep the mask."""

    sparsity: float
    at: int

    def target(self, step: int) -> float:
        return self.sparsity if step >= self.at else 0.0

    def is_compressed(self, step: int) -> bool:
        return step >= self.at

    def updates_mask(self, step: int) -> bool:
        return step == self.at

    def update_ranges(self, total_steps: int) -> Sequence[range]:
        return (range(self.at, self.at + 1),) if 0 <= self.at < total_steps else ()


@dataclass(frozen=True)
class Gradual(SparsitySchedule):
    """Gradual magnitude pruning (Zhu & Gupta): cubic ramp from ``initial_sparsity`` to ``final_sparsity``.

    s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n·Δt))^3 evaluated at t0, t0+Δt, ..., t0+n·Δt = end.
    Masks are recomputed every ``frequency`` steps inside [start, end] and stay fixed after.
    """

    initial_sparsity: float
    final_sparsity: float
    start: int
    end: int
    frequency: int

    def _last_update(self, step: int) -> int:
        k = (min(step, self.end) - self.start) // self.frequency
        return self.start + k * self.frequency

    def cubic(self, t: int) -> float:
        span = self.end - self.start
        frac = min(max((t - self.start) / span, 0.0), 1.0) if span > 0 else 1.0
        return self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * (1.0 - frac) ** 3

    def target(self, step: int) -> float:
        if step < self.start:
            return 0.0
        if step >= self.end:
            return self.final_sparsity
        return self.cubic(self._last_update(step))

    def is_compressed(self, step: int) -> bool:
        return step >= self.start

    def updates_mask(self, step: int) -> bool:
        if step < self.start or step > self.end:
            return False
        return (step - self.start) % self.frequency == 0 or step == self.end

    def update_ranges(self, total_steps: int) -> Sequence[range]:
        """start, start + frequency, ... up to end, then end itself if it is off that grid."""
        first = self.start if self.start >= 0 else self.start % self.frequency  # the grid's first step >= 0
        last = min(self.end, total_steps - 1)
        grid = range(first, last + 1, self.frequency)
        off_grid = self.start <= self.end and 0 <= self.end < total_steps and (self.end - self.start) % self.frequency
        return (grid, range(self.end, self.end + 1)) if off_grid else (grid,)


@dataclass(frozen=True)
class ACDC(SparsitySchedule):
    """Alternating Compressed/DeCompressed training (Peste et al., 2021).

    [0, warmup) dense; then compressed phases of ``compressed`` steps alternating
    with dense phases of ``decompressed`` steps; from ``total - final`` to ``total``
    one last compressed fine-tuning phase.  Masks are recomputed by magnitude at the
    start of every compressed phase (a dense phase lets pruned weights regrow).
    With ``last_decompressed`` > 0 the alternation stops that many steps before the
    final phase and the model trains dense until it (the published ImageNet runs end
    with a longer dense phase before the final compressed one).
    """

    sparsity: float
    warmup: int
    compressed: int
    decompressed: int
    final: int
    total: int
    last_decompressed: int = 0

    @property
    def final_start(self) -> int:
        return self.total - self.final

    @property
    def alternation_end(self) -> int:
        return self.final_start - self.last_decompressed

    @property
    def period(self) -> int:
        return self.compressed + self.decompressed

    def phase_starts(self) -> List[int]:
        """Start steps of all compressed phases."""
        return [*range(self.warmup, self.alternation_end, self.period), self.final_start]

    def is_compressed(self, step: int) -> bool:
        if step >= self.final_start:
            return True
        if step < self.warmup or step >= self.alternation_end:
            return False
        return (step - self.warmup) % (self.compressed + self.decompressed) < self.compressed

    def target(self, step: int) -> float:
        return self.sparsity if self.is_compressed(step) else 0.0

    def updates_mask(self, step: int) -> bool:
        if step >= self.final_start:
            return step == self.final_start
        if step >= self.alternation_end:
            return False
        return step >= self.warmup and (step - self.warmup) % (self.compressed + self.decompressed) == 0

    def update_ranges(self, total_steps: int) -> Sequence[range]:
        """The alternation's compressed-phase starts before the alternation ends, then the final phase's start."""
        first = self.warmup if self.warmup >= 0 else self.warmup % self.period  # the grid's first step >= 0
        alternation = range(first, min(self.alternation_end, self.final_start, total_steps), self.period)
        final = range(self.final_start, self.final_start + 1) if 0 <= self.final_start < total_steps else range(0)
        return (alternation, final)
