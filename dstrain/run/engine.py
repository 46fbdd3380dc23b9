"""The sparse DeepSpeed engine of a run: model, masks, criterion, masked optimizer, recipe scheduler.

Why apart from the loop: the order of these steps is what keeps masks and DeepSpeed in
agreement, and it differs by ZeRO stage.

* Stages 0-2: masks are made on the whole model first (the recipe's step-0 masks, e.g. a
  ``constant`` schedule, are applied before DeepSpeed copies the weights into its fp32
  masters), then ``deepspeed.initialize`` takes the recipe scheduler as its LR scheduler,
  then :class:`~dstrain.sparsity.partitions.PartitionMasks` slices the masks into the flat
  fp32 partitions the optimizer really steps.
* Stage 3: DeepSpeed partitions every parameter at ``initialize``; a mask of the whole model
  per rank would cost what ZeRO-3 saves.  So the engine is made first, the registry is made
  over this rank's partitions (:class:`~dstrain.sparsity.zero3.PartitionedMaskRegistry`),
  the recipe scheduler is attached to the engine afterwards, and its first mask update
  waits for the first step (on the partitions, through the fp32 masters like any update).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator

import torch
from torch import nn

from dstrain.errors import ConfigError
from dstrain.optim.factory import build_optimizer
from dstrain.run.placement import apply_channels_last, match_buffer_dtype
from dstrain.sparsity.controller import SparsityController
from dstrain.sparsity.criterion import Criterion, build_criterion
from dstrain.sparsity.partitions import PartitionMasks
from dstrain.sparsity.registry import MaskRegistry, PrunableSelection


@dataclass
class SparseEngine:
    engine: Any  # deepspeed.DeepSpeedEngine
    optimizer: Any  # DeepSpeed's optimizer wrapper (or the client optimizer at stage 0 fp32)
    client_optimizer: torch.optim.Optimizer
    registry: MaskRegistry
    criterion: Criterion
    controller: SparsityController
    partition_masks: PartitionMasks
    weights_channels_last: bool


def build_engine(model: nn.Module, task: Any, recipe: Any, ds_config: Dict[str, Any], steps_per_epoch: int,
                 stage: int, device: torch.device, log: Callable[[str], None]) -> SparseEngine:
    import deepspeed

    selection = PrunableSelection.from_pruning(recipe.pruning)
    client_optimizer = build_optimizer(model, recipe)
    if stage == 3:
        engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=client_optimizer, config=ds_config)
        from dstrain.sparsity.zero3 import PartitionedMaskRegistry

        registry = PartitionedMaskRegistry(engine.module, selection)
        registry.release_gathered = engine.empty_partition_cache
        criterion = _criterion(recipe, registry, log)
        if criterion.needs_data:
            raise ConfigError("pruning.criterion", f"{criterion.name} is not supported under ZeRO stage 3: it "
                              "needs whole weights with their gradients (obert) or layer inputs (wanda, sparsegpt) "
                              "on one rank, and stage 3 holds only slices",
                              "use ZeRO stage 1 or 2 with this criterion, or criterion: magnitude")
        controller = SparsityController(recipe, registry, client_optimizer, steps_per_epoch, criterion, defer=True)
        engine.lr_scheduler = controller  # DeepSpeed steps it after every applied step and checkpoints it per rank
    else:
        registry = MaskRegistry(model, selection)
        criterion = _criterion(recipe, registry, log)
        client_optimizer.set_mask_source(registry.mask_for)
        controller = SparsityController(recipe, registry, client_optimizer, steps_per_epoch, criterion,
                                        will_attach=True)
        engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=client_optimizer,
                                                       lr_scheduler=controller, config=ds_config)
    match_buffer_dtype(engine.module, device)
    if getattr(getattr(task, "config", None), "compile", False):
        engine.compile()  # in place: parameters (and so masks) are unchanged
    # ZeRO and mixed precision hand the optimizer flat fp32 partitions: give it their masks.
    partition_masks = PartitionMasks(optimizer, registry)
    channels_last = task.channels_last and apply_channels_last(
        engine.module, registry, partition_masks.flattened, recipe.optimizer.backend, log)
    client_optimizer.set_mask_source(partition_masks.mask_for)
    controller.on_masks_updated = partition_masks.refresh
    return SparseEngine(engine, optimizer, client_optimizer, registry, criterion, controller, partition_masks,
                        channels_last)


@contextlib.contextmanager
def whole_model(engine: Any, stage: int) -> Iterator[nn.Module]:
    """The engine's module with every parameter whole (every rank must enter: under ZeRO-3 this is
    DeepSpeed's own gather of all parameters, for an export at the end of a run)."""
    if stage != 3:
        yield engine.module
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None):
        yield engine.module


class PartitionedTeacher:
    """A frozen distillation teacher partitioned by ZeRO-3 like the student, so a teacher as large as
    the student fits: an engine without an optimizer, called like the model.

    Why release after each call: a forward without a backward leaves DeepSpeed's gathered copies in
    place (nothing frees them), which would keep the whole teacher on every rank.
    """

    def __init__(self, teacher: nn.Module, ds_config: Dict[str, Any]) -> None:
        import deepspeed

        config = {key: ds_config[key] for key in ("train_micro_batch_size_per_gpu", "train_batch_size",
                                                  "gradient_accumulation_steps", "bf16", "fp16") if key in ds_config}
        config["zero_optimization"] = {"stage": 3, "stage3_param_persistence_threshold": 0}
        self.engine, *_ = deepspeed.initialize(model=teacher, config=config)
        self.engine.eval()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self.engine(*args, **kwargs)
        self.engine.empty_partition_cache()
        return out

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.engine.module.parameters()


def _criterion(recipe: Any, registry: MaskRegistry, log: Callable[[str], None]) -> Criterion:
    criterion = build_criterion(recipe.pruning, registry)
    for line in criterion.describe():
        log(line)
    return criterion
