"""dstrain: sparse training with recipes made for sparsity, on DeepSpeed.

Public API: recipes (:func:`load_recipe`), masks (:class:`MaskRegistry`) and the
criteria that choose them, schedules, masked optimizers, the recipe scheduler
(:class:`SparsityController`) and the DeepSpeed trainer (:class:`SparseTrainer`).
"""
from dstrain.errors import ConfigError
from dstrain.export import (
    export_sparse_model,
    load_compressed,
    save_compressed,
    swap_to_semi_structured,
)
from dstrain.optim import MaskedAdamW, MaskedSGD, masked_adamw, masked_sgd
from dstrain.recipe import Recipe, dump_recipe, load_recipe, parse_recipe
from dstrain.run.dsconfig import validate_ds_config
from dstrain.run.manifest import CheckpointDamaged, verify_checkpoint
from dstrain.run.options import TrainerCallback, TrainerOptions
from dstrain.run.trainer import SparseTrainer
from dstrain.schedules import (
    ACDC,
    Constant,
    Dense,
    Gradual,
    LRSchedule,
    OneShot,
    SparsitySchedule,
)
from dstrain.sparsity.controller import SparsityController
from dstrain.sparsity.criterion import CRITERIA, Criterion, DataHooks, build_criterion
from dstrain.sparsity.fisher import BlockFisherInverse, BlockLayout, fisher_bytes
from dstrain.sparsity.magnitude import (
    MagnitudeCriterion,
    global_magnitude_masks,
    layerwise_magnitude_masks,
)
from dstrain.sparsity.nm import is_nm, nm_mask, parse_pattern
from dstrain.sparsity.obert import ObertCriterion
from dstrain.sparsity.registry import MaskRegistry, PrunableSelection, select_prunable
from dstrain.tasks import Task, build_task

# Hugging Face interop imports transformers: loaded on first use, not with dstrain.
_LAZY = {"prepare_hf_sparse_training": "dstrain.hf"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dstrain' has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    "ACDC", "CRITERIA", "ConfigError", "Constant", "Criterion", "DataHooks", "Dense", "Gradual", "LRSchedule",
    "MagnitudeCriterion", "MaskRegistry", "MaskedAdamW", "MaskedSGD", "ObertCriterion", "OneShot",
    "PrunableSelection", "Recipe", "SparseTrainer", "SparsityController", "SparsitySchedule", "TrainerCallback",
    "TrainerOptions", "build_criterion", "global_magnitude_masks", "layerwise_magnitude_masks", "load_recipe",
    "masked_adamw", "masked_sgd", "parse_recipe", "select_prunable", "BlockFisherInverse", "BlockLayout",
    "fisher_bytes", "Task", "build_task", "dump_recipe", "export_sparse_model", "prepare_hf_sparse_training",
    "CheckpointDamaged", "verify_checkpoint", "validate_ds_config", "is_nm", "nm_mask", "parse_pattern",
    "load_compressed", "save_compressed", "swap_to_semi_structured",
]
