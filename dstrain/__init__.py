"""dstrain: sparse training with recipes made for sparsity, on DeepSpeed.

Public API: recipes (:func:`load_recipe`), masks (:class:`MaskRegistry`), pruning
criteria, schedules, masked optimizers, the recipe scheduler
(:class:`SparsityController`) and the DeepSpeed trainer (:class:`SparseTrainer`).
"""
from .controller import SparsityController
from .errors import ConfigError
from .masks import MaskRegistry, PrunableSelection, select_prunable
from .optim import MaskedAdamW, MaskedSGD, masked_adamw, masked_sgd
from .pruning import global_magnitude_masks, layerwise_magnitude_masks
from .recipe import Recipe, load_recipe, parse_recipe
from .schedules import ACDC, Constant, Dense, Gradual, LRSchedule, OneShot, SparsitySchedule
from .trainer import SparseTrainer, TrainerCallback, TrainerOptions

__version__ = "0.1.0"

__all__ = [
    "ACDC", "ConfigError", "Constant", "Dense", "Gradual", "LRSchedule", "MaskRegistry", "MaskedAdamW",
    "MaskedSGD", "OneShot", "PrunableSelection", "Recipe", "SparseTrainer", "SparsityController",
    "SparsitySchedule", "TrainerCallback", "TrainerOptions", "global_magnitude_masks", "layerwise_magnitude_masks",
    "load_recipe", "masked_adamw", "masked_sgd", "parse_recipe", "select_prunable",
]
