"""Step schedules from a recipe, once the loader's steps per epoch are known.

Why here and not on the recipe: the recipe describes, in epochs or steps as its author
wrote them; the schedules are runtime objects in optimizer steps, and only the trainer
knows how many steps an epoch has.
"""
from __future__ import annotations

from typing import Any, Callable, Tuple

from dstrain.errors import ConfigError
from dstrain.schedules.lr import LRSchedule
from dstrain.schedules.sparsity import (
    ACDC,
    Constant,
    Dense,
    Gradual,
    OneShot,
    SparsitySchedule,
)


#: Most LR restarts (mask updates under lr_schedule.rewind_at_pruning): the schedule holds them as
#: a tuple, so a pruning step every few optimizer steps of a billion-step run would fill the memory.
MAX_LR_RESTARTS = 1_000_000


def _converter(unit: str, steps_per_epoch: int) -> Callable[[float], int]:
    if unit == "step":
        return lambda v: int(v)
    return lambda v: int(round(v * steps_per_epoch))


def lr_restarts(recipe: Any, steps_per_epoch: int, sparsity: SparsitySchedule,
                source: str = "recipe") -> Tuple[int, ...]:
    """The steps at which ``lr_schedule.rewind_at_pruning`` restarts the LR (none without it).

    Counted in closed form before the tuple is built: too many is a ConfigError, not an
    exhausted memory.
    """
    if not recipe.lr_schedule.rewind_at_pruning:
        return ()
    total = recipe.total_steps(steps_per_epoch)
    count = sparsity.count_updates(total)
    if count > MAX_LR_RESTARTS:
        raise ConfigError(f"{source}: lr_schedule.rewind_at_pruning",
                          f"would restart the LR at {count:,} mask updates ({total:,} steps), more than "
                          f"{MAX_LR_RESTARTS:,}", "update masks less often (pruning.schedule.frequency, or the "
                          "AC/DC phase lengths) or set rewind_at_pruning: false")
    return tuple(t for t in sparsity.update_steps(total) if t > 0)


def build_sparsity_schedule(recipe: Any, steps_per_epoch: int) -> SparsitySchedule:
    """The recipe's ``pruning.schedule`` in optimizer steps."""
    to_step = _converter(recipe.pruning.unit, steps_per_epoch)
    s = recipe.pruning.schedule
    total = recipe.total_steps(steps_per_epoch)
    if s.kind == "dense":
        return Dense()
    if s.kind == "constant":
        return Constant(s.sparsity)
    if s.kind == "oneshot":
        return OneShot(s.sparsity, to_step(s.at))
    if s.kind == "gmp":
        start, end = to_step(s.start), min(to_step(s.end), total - 1)
        return Gradual(s.initial_sparsity, s.final_sparsity, start, max(end, start + 1),
                       max(1, to_step(s.frequency)))
    return ACDC(s.sparsity, to_step(s.warmup), max(1, to_step(s.compressed)),
                max(1, to_step(s.decompressed)), max(1, to_step(s.final)), total,
                to_step(s.last_decompressed))


def build_lr_schedule(recipe: Any, steps_per_epoch: int, sparsity: SparsitySchedule) -> LRSchedule:
    """The recipe's ``lr_schedule`` in optimizer steps (restarted at mask updates if it says so)."""
    spec = recipe.lr_schedule
    to_step = _converter(spec.unit, steps_per_epoch)
    total = recipe.total_steps(steps_per_epoch)
    restarts = lr_restarts(recipe, steps_per_epoch, sparsity)
    return LRSchedule(
        base_lr=recipe.optimizer.lr, total=total, shape=spec.shape, warmup=to_step(spec.warmup),
        warmup_start_factor=spec.warmup_start_factor, min_lr=spec.min_lr,
        milestones=tuple(to_step(m) for m in spec.milestones), gamma=spec.gamma, restarts=restarts,
        cyclic=spec.cyclic)
