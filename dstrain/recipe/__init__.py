"""Declarative sparse-training recipes: the models (:mod:`.spec`), YAML in and out (:mod:`.io`, in the
dialect of :mod:`.yaml_loader`), and the checks across sections (:mod:`.checks`)."""
from dstrain.recipe.checks import check_schedule_positions, schedule_positions
from dstrain.recipe.io import dump_recipe, load_recipe, loads_recipe, parse_recipe, write_recipe, write_recipe_grid
from dstrain.recipe.spec import (ACDCSchedule, ConstantSchedule, DenseSchedule, DistillationSpec, GradualSchedule,
                                 LRScheduleSpec, OneShotSchedule, OptimizerSpec, PruningSpec, Recipe, TrainingSpec)

__all__ = ["Recipe", "PruningSpec", "OptimizerSpec", "LRScheduleSpec", "TrainingSpec", "DistillationSpec",
           "DenseSchedule", "ConstantSchedule", "OneShotSchedule", "GradualSchedule", "ACDCSchedule",
           "load_recipe", "loads_recipe", "parse_recipe", "dump_recipe", "write_recipe", "write_recipe_grid",
           "schedule_positions", "check_schedule_positions"]
