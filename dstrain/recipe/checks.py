"""Checks across a recipe's sections, reported against the field to change.

Why apart from the models: they need the whole recipe (a schedule against the run's
length, the LR floor against the LR) and, for step units, the loader length, which is
known only when the trainer has built its data.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

from dstrain.errors import ConfigError
from dstrain.recipe.spec import Recipe


def schedule_positions(recipe: "Recipe") -> List[Tuple[str, float, str, bool]]:
    """(field, position, unit, must_be_before_end) of every scheduled event of the recipe.

    An event at or after the end never happens (a one-shot prune at step 100000 of a
    44-step run left the model dense with exit 0), so starts, one-shot points, LR
    warm-up and milestones must lie strictly inside training; ends may equal it.
    """
    s, unit = recipe.pruning.schedule, recipe.pruning.unit
    out: List[Tuple[str, float, str, bool]] = []
    if s.kind == "oneshot":
        out.append(("pruning.schedule.at", s.at, unit, True))
    elif s.kind == "gmp":
        out += [("pruning.schedule.start", s.start, unit, True), ("pruning.schedule.end", s.end, unit, False)]
    elif s.kind == "acdc":
        out.append(("pruning.schedule", s.warmup + s.last_decompressed + s.final, unit, False))
    lr = recipe.lr_schedule
    if lr.warmup:
        out.append(("lr_schedule.warmup", lr.warmup, lr.unit, True))
    out += [(f"lr_schedule.milestones.{i}", m, lr.unit, True) for i, m in enumerate(lr.milestones)]
    return out


def schedule_lengths(recipe: "Recipe") -> List[Tuple[str, float, str]]:
    """(field, length, unit) of the schedule's repeating intervals: GMP's frequency, AC/DC's phases.

    An interval longer than the whole training never repeats (a GMP frequency of 10^18
    steps prunes at start and end only; an AC/DC compressed phase longer than the run
    never decompresses): it is a mistake, refused like an event after the end.
    """
    s, unit = recipe.pruning.schedule, recipe.pruning.unit
    if s.kind == "gmp":
        return [("pruning.schedule.frequency", s.frequency, unit)]
    if s.kind == "acdc":
        return [("pruning.schedule.compressed", s.compressed, unit),
                ("pruning.schedule.decompressed", s.decompressed, unit)]
    return []


def _training_length(recipe: Recipe, unit: str, steps_per_epoch: Optional[int],
                     what: str) -> Tuple[Optional[float], str]:
    """(the training's length in ``unit``, its description); (None, "") for steps before the loader is known."""
    epochs = recipe.training.epochs
    if unit == "epoch":
        return epochs, f"training.epochs ({epochs:g})"
    if not steps_per_epoch:
        return None, ""
    limit = recipe.total_steps(steps_per_epoch)
    return limit, f"{what} ({limit} steps: training.epochs {epochs:g} x {steps_per_epoch} steps per epoch)"


def check_schedule_positions(recipe: "Recipe", source: str = "recipe",
                             steps_per_epoch: Optional[int] = None) -> None:
    """Every event inside the training, in both units: epoch units at load time, step units once
    the trainer knows the steps per epoch (``steps_per_epoch``).  With the steps known, LR
    rewinding's restarts are counted too (:func:`dstrain.schedules.factory.lr_restarts`)."""
    for field, length, unit in schedule_lengths(recipe):
        limit, end = _training_length(recipe, unit, steps_per_epoch, "the training")
        if limit is None:
            continue
        if length > limit:
            raise ConfigError(f"{source}: {field}", f"{length:g} {unit}s is longer than {end}",
                              "shorten it to at most the training's length")
    for field, pos, unit, before_end in schedule_positions(recipe):
        limit, end = _training_length(recipe, unit, steps_per_epoch, "the end of training")
        if limit is None:
            continue
        if pos < limit or (pos == limit and not before_end):
            continue
        if field == "pruning.schedule":
            problem = f"warmup + last_decompressed + final ({pos:g} {unit}s) exceed {end}"
        elif field == "lr_schedule.warmup" and unit == "epoch":
            problem = f"{pos:g} epochs is not shorter than {end}"
        else:
            problem = f"{unit} {pos:g} is {'at or ' if before_end and pos == limit else ''}after {end}"
        raise ConfigError(f"{source}: {field}", problem,
                          "shorten the schedule or train longer" + (" (pruning.unit / lr_schedule.unit: "
                                                                    "step counts optimizer steps)" if unit == "step" else ""))
    if steps_per_epoch:
        from dstrain.schedules.factory import build_sparsity_schedule, lr_restarts

        lr_restarts(recipe, steps_per_epoch, build_sparsity_schedule(recipe, steps_per_epoch), source)


def check_cross_fields(recipe: "Recipe", source: str) -> None:
    """Checks across sections, reported against the field to change."""
    check_schedule_positions(recipe, source)
    if recipe.lr_schedule.min_lr > recipe.optimizer.lr:
        raise ConfigError(f"{source}: lr_schedule.min_lr", f"{recipe.lr_schedule.min_lr:g} is above optimizer.lr "
                          f"({recipe.optimizer.lr:g}): the LR would rise during training",
                          "set min_lr <= lr (e.g. lr / 10, or 0)")
    from dstrain.tasks import (
        check_task_config,  # the task section is validated by its task's own schema
    )

    check_task_config(recipe.task, f"{source}: task")
