"""Hugging Face interop: export sparse models for plain ``transformers``, and run dstrain
sparsity inside an ordinary ``transformers.Trainer``.

Why: people evaluate and deploy BERT checkpoints with ``from_pretrained``; a sparse model
is only useful to them if it loads there with no dstrain import and with its zeros
intact. Conversely, some users already have HF ``Trainer`` scripts and want dstrain's
recipes without switching trainers — an optimizer, a scheduler and a callback passed to
``Trainer`` are the least intrusive hook::

    from dstrain import load_recipe
    from dstrain.hf import export_sparse_model, prepare_hf_sparse_training

    recipe = load_recipe("recipes/bert/mnli_gmp90_10ep.yaml")   # no distillation section
    steps_per_epoch = len(train_set) // recipe.training.batch_size          # drop_last=True
    sparse = prepare_hf_sparse_training(model, recipe, steps_per_epoch)
    args = TrainingArguments(..., per_device_train_batch_size=recipe.training.batch_size,
                             max_steps=sparse.controller.total_steps, dataloader_drop_last=True)
    trainer = Trainer(model=model, args=args, train_dataset=train_set,
                      optimizers=(sparse.optimizer, sparse.lr_scheduler), callbacks=[sparse.callback])
    trainer.train()
    export_sparse_model(model, "out/sparse", tokenizer=tokenizer)

Division of labour: HF runs forward/backward/clipping/``optimizer.step()``; the masked
optimizer keeps pruned weights (and their moments) at exactly zero inside that step; the
recipe's clock (:class:`~dstrain.sparsity.controller.SparsityController`) advances in the callback's
``on_step_end`` — after every applied optimizer step, as DeepSpeed's scheduler hook does in
:class:`~dstrain.run.trainer.SparseTrainer` — and the next step's masks, phase and LR are set in
``on_step_begin``, right before its forward pass (``SparsityController.begin_step``, as the
SparseTrainer loop does), so HF's logging, evaluation and checkpoints in between see the
model as trained. HF's own LR schedule is replaced by :class:`RecipeLRScheduler`, which changes nothing and
only reports the recipe's LR, so the two schedules cannot fight.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, NamedTuple, Optional, Union

from torch import nn

# export lives below hf/tasks/trainer (dstrain/export.py); re-exported here for existing callers
from dstrain.errors import ConfigError
from dstrain.export import (  # noqa: F401
    SPARSITY_REPORT,
    count_zeros_in_safetensors,
    export_sparse_model,
    unwrap_model,
)
from dstrain.optim.factory import build_optimizer
from dstrain.recipe import Recipe, load_recipe
from dstrain.sparsity.controller import SparsityController
from dstrain.sparsity.criterion import build_criterion
from dstrain.sparsity.registry import MaskRegistry, PrunableSelection

if TYPE_CHECKING:  # pragma: no cover
    from dstrain.sparsity.magnitude import KthSelector

__all__ = ["unwrap_model", "export_sparse_model", "count_zeros_in_safetensors", "prepare_hf_sparse_training",
           "HFSparseTraining", "RecipeLRScheduler", "DstrainRecipeCallback"]

class RecipeLRScheduler:
    """The LR "scheduler" handed to ``transformers.Trainer``: it never changes the LR.

    The recipe's LR is set on the optimizer by the controller (stepped from
    :class:`DstrainRecipeCallback`); HF only reads it back through :meth:`get_last_lr` for
    its logs. :meth:`step` just records that HF considered the optimizer step applied (HF
    and accelerate skip it after an fp16 overflow, and accelerate may call it once per
    process), so the callback advances the recipe's clock exactly once per applied step.
    The controller's state (step count, masks, history) is saved and restored with HF
    checkpoints as this scheduler's ``state_dict``.
    """

    def __init__(self, controller: "SparsityController") -> None:
        self.controller = controller
        self.optimizer = controller.optimizer
        self._step_count = 0  # accelerate's AcceleratedScheduler touches this during accumulation
        self._applied = False

    def step(self, *_: Any, **__: Any) -> None:
        self._applied = True

    def consume_applied(self) -> bool:
        applied, self._applied = self._applied, False
        return applied

    def get_last_lr(self) -> List[float]:
        return self.controller.get_last_lr()

    get_lr = get_last_lr

    def state_dict(self) -> Dict[str, Any]:
        return self.controller.state_dict()

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.controller.load_state_dict(state)


def _callback_base() -> type:
    from transformers import TrainerCallback

    return TrainerCallback


def _unwrap_scheduler(scheduler: Any) -> Any:
    seen = 0
    while scheduler is not None and not isinstance(scheduler, RecipeLRScheduler) and seen < 4:
        scheduler = getattr(scheduler, "scheduler", None)  # accelerate's AcceleratedScheduler
        seen += 1
    return scheduler


class DstrainRecipeCallback(_callback_base()):  # type: ignore[misc]
    """Drives a :class:`~dstrain.sparsity.controller.SparsityController` from ``transformers.Trainer``.

    Hook choice (transformers 5.x ``Trainer._run_epoch``): ``on_step_end`` fires once per
    optimizer step, after ``optimizer.step()``, the scheduler's ``step()`` and
    ``zero_grad`` — the same point at which DeepSpeed steps the controller in
    :class:`~dstrain.run.trainer.SparseTrainer` — and advances the recipe's clock there.
    ``on_step_begin`` fires once per optimizer step before its first micro-batch's forward
    pass; :meth:`~dstrain.sparsity.controller.SparsityController.begin_step` there recomputes the
    masks when the recipe says so (zeroing the newly pruned weights), switches the
    compressed/dense phase and sets the LR, exactly where SparseTrainer calls it. Build it
    with :func:`prepare_hf_sparse_training`.
    """

    def __init__(self, controller: "SparsityController", lr_scheduler: RecipeLRScheduler) -> None:
        if not isinstance(lr_scheduler, RecipeLRScheduler) or lr_scheduler.controller is not controller:
            raise ValueError("lr_scheduler must be the RecipeLRScheduler of this controller "
                             "(use dstrain.hf.prepare_hf_sparse_training)")
        self.controller = controller
        self.lr_scheduler = lr_scheduler

    @property
    def registry(self) -> "MaskRegistry":
        return self.controller.registry

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        ctl, recipe = self.controller, self.controller.recipe
        if getattr(args, "deepspeed", None) or getattr(args, "fsdp", None):
            raise ConfigError("TrainingArguments.deepspeed/fsdp",
                              "sharded parameters cannot be masked in the optimizer step from an HF callback",
                              "use dstrain.SparseTrainer for DeepSpeed/ZeRO; plain or DDP runs work here")
        if _unwrap_scheduler(kwargs.get("lr_scheduler")) is not self.lr_scheduler:
            raise ConfigError("Trainer(optimizers=...)", "the Trainer does not use this recipe's LR scheduler, so "
                              "its own schedule would fight the recipe",
                              "pass optimizers=(sparse.optimizer, sparse.lr_scheduler) to Trainer")
        opt = kwargs.get("optimizer")
        if opt is not None and getattr(opt, "optimizer", opt) is not ctl.optimizer:
            raise ConfigError("Trainer(optimizers=...)", "the Trainer does not use the masked optimizer",
                              "pass optimizers=(sparse.optimizer, sparse.lr_scheduler) to Trainer")
        world = max(1, int(getattr(args, "world_size", 1)))
        batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * world
        if batch != recipe.training.batch_size:
            raise ConfigError("TrainingArguments.per_device_train_batch_size",
                              f"{args.per_device_train_batch_size} x accumulation {args.gradient_accumulation_steps}"
                              f" x {world} processes = {batch} != the recipe's training.batch_size "
                              f"({recipe.training.batch_size})", "make them equal")
        loader = kwargs.get("train_dataloader")
        if loader is not None and hasattr(loader, "__len__"):
            per_epoch = math.ceil(len(loader) / args.gradient_accumulation_steps)
            if per_epoch != ctl.steps_per_epoch:
                raise ConfigError("prepare_hf_sparse_training(steps_per_epoch=...)",
                                  f"{ctl.steps_per_epoch}, but the Trainer takes {per_epoch} optimizer steps per "
                                  "epoch", f"pass steps_per_epoch={per_epoch} (or set dataloader_drop_last=True "
                                  "and use len(train_set) // batch_size)")
        if state.max_steps > ctl.total_steps:
            raise ConfigError("TrainingArguments.max_steps", f"the Trainer would run {state.max_steps} steps, the "
                              f"recipe has {ctl.total_steps}", f"pass max_steps={ctl.total_steps}")
        if state.max_steps < ctl.total_steps:
            warnings.warn(f"the Trainer stops after {state.max_steps} of the recipe's {ctl.total_steps} steps; "
                          "the recipe's final sparsity and LR decay may not be reached", stacklevel=2)
        if ctl.step_count != state.global_step:
            raise ConfigError("resume_from_checkpoint", f"the recipe is at step {ctl.step_count} but the Trainer at "
                              f"{state.global_step}", "resume from a checkpoint saved with this callback")
        self.registry.follow_param_devices()  # the Trainer moved the model after the registry was built
        self.lr_scheduler.consume_applied()

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.controller.begin_step()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self.lr_scheduler.consume_applied():
            return  # optimizer step skipped (fp16 overflow): the recipe's clock does not move
        self.controller.step()
        if self.controller.finished:
            control.should_training_stop = True


class HFSparseTraining(NamedTuple):
    """What :func:`prepare_hf_sparse_training` returns; unpacks as ``(optimizer, lr_scheduler, callback)``."""

    optimizer: Any
    lr_scheduler: RecipeLRScheduler
    callback: DstrainRecipeCallback

    @property
    def controller(self) -> "SparsityController":
        return self.callback.controller

    @property
    def registry(self) -> "MaskRegistry":
        return self.callback.controller.registry


def prepare_hf_sparse_training(
    model: nn.Module,
    recipe: Union["Recipe", str, Path],
    steps_per_epoch: int,
    selector: Optional["KthSelector"] = None,
) -> HFSparseTraining:
    """Masks, masked optimizer, recipe controller, LR shim and callback for ``transformers.Trainer``.

    ``recipe`` is a :class:`~dstrain.recipe.Recipe` or a YAML path. Its ``task`` section is
    ignored (the caller owns model and data); ``training.batch_size`` must equal the
    Trainer's total batch and ``steps_per_epoch`` the Trainer's optimizer steps per epoch
    (``len(train_set) // batch_size`` with ``dataloader_drop_last=True``); both are checked
    when training starts. Distillation is not run by HF's loss, so a recipe with a
    ``distillation`` section is refused (use :class:`~dstrain.run.trainer.SparseTrainer`, or drop
    the section and add :func:`dstrain.distill.distillation_loss` in ``Trainer.compute_loss``).

    Call it with the model on the device it will train on if you can; masks built on
    another device are moved when training starts. The controller's constructor already
    applies step 0 of the recipe (e.g. a ``constant`` schedule prunes here).
    """

    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    if recipe.distillation is not None:
        raise ConfigError("distillation", "HF Trainer computes its own loss, so the recipe's distillation would "
                          "be silently skipped", "train with dstrain.SparseTrainer, or remove the section and add "
                          "dstrain.distill.distillation_loss in a Trainer.compute_loss override")
    if int(steps_per_epoch) < 1:
        raise ConfigError("steps_per_epoch", f"{steps_per_epoch} must be >= 1",
                          "pass len(train_set) // batch_size")
    model = unwrap_model(model)
    registry = MaskRegistry(model, PrunableSelection.from_pruning(recipe.pruning))
    optimizer = build_optimizer(model, recipe)
    optimizer.set_mask_source(registry.mask_for)
    criterion = build_criterion(recipe.pruning, registry, selector=selector)
    controller = SparsityController(recipe, registry, optimizer, int(steps_per_epoch), criterion=criterion)
    scheduler = RecipeLRScheduler(controller)
    return HFSparseTraining(optimizer, scheduler, DstrainRecipeCallback(controller, scheduler))
