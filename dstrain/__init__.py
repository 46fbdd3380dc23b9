"""dstrain: sparse training with recipes made for sparsity, on DeepSpeed.

Public API: recipes (:func:`load_recipe`), masks (:class:`MaskRegistry`), pruning
criteria, schedules, masked optimizers, the recipe scheduler
(:class:`SparsityController`) and the DeepSpeed trainer (:class:`SparseTrainer`).
"""
from .controller import SparsityController
from .dsconfig import validate_ds_config
from .errors import ConfigError
from .manifest import CheckpointDamaged, verify_checkpoint
from .masks import MaskRegistry, PrunableSelection, select_prunable
from .nm import is_nm, nm_mask, parse_pattern
from .export import export_sparse_model, load_compressed, save_compressed, swap_to_semi_structured
from .optim import MaskedAdamW, MaskedSGD, masked_adamw, masked_sgd
from .pruning import global_magnitude_masks, layerwise_magnitude_masks
from .obert import BlockFisherInverse, BlockLayout, fisher_bytes
from .obert_pruner import ObertPruner
from .recipe import Recipe, load_recipe, parse_recipe
from .schedules import ACDC, Constant, Dense, Gradual, LRSchedule, OneShot, SparsitySchedule
from .tasks import Task, build_task
from .trainer import SparseTrainer, TrainerCallback, TrainerOptions
from .recipe import dump_recipe

# Hugging Face interop imports transformers: loaded on first use, not with dstrain.
_LAZY = {"prepare_hf_sparse_training": "dstrain.hf"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dstrain' has no attribute {name!r}")

__version__ = "0.1.0"

__all__ = [
    "ACDC", "ConfigError", "Constant", "Dense", "Gradual", "LRSchedule", "MaskRegistry", "MaskedAdamW",
    "MaskedSGD", "OneShot", "PrunableSelection", "Recipe", "SparseTrainer", "SparsityController",
    "SparsitySchedule", "TrainerCallback", "TrainerOptions", "global_magnitude_masks", "layerwise_magnitude_masks",
    "load_recipe", "masked_adamw", "masked_sgd", "parse_recipe", "select_prunable",
    "BlockFisherInverse", "BlockLayout", "ObertPruner", "fisher_bytes",
    "Task", "build_task", "dump_recipe", "export_sparse_model", "prepare_hf_sparse_training",
    "CheckpointDamaged", "verify_checkpoint", "validate_ds_config",
    "is_nm", "nm_mask", "parse_pattern", "load_compressed", "save_compressed", "swap_to_semi_structured",
]
