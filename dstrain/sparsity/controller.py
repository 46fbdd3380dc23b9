"""The recipe scheduler: turns a recipe into per-step LR, phase and mask updates.

It implements the LR-scheduler protocol DeepSpeed expects (``step``,
``state_dict``, ``load_state_dict``, ``get_last_lr``) and is passed to
``deepspeed.initialize(lr_scheduler=...)``.  DeepSpeed calls ``step()`` only after
an optimizer step that was really applied (not after a skipped fp16-overflow step,
nor between gradient-accumulation micro-steps), so the recipe's clock counts
exactly the optimizer steps taken, whatever the precision or accumulation.

``step()`` only advances the clock; the work for the next step (mask
recomputation, phase switch, LR) happens in :meth:`begin_step`, which the trainer
calls right before the next forward pass.  Evaluation and checkpoints in between
therefore see the model as trained, not already pruned for the next phase (an
AC/DC phase boundary falls on an epoch end).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

from torch.optim import Optimizer

from dstrain.errors import ConfigError
from dstrain.schedules.factory import build_lr_schedule, build_sparsity_schedule
from dstrain.sparsity.criterion import Criterion, build_criterion
from dstrain.sparsity.registry import MaskRegistry


class SparsityController:
    """Owns the step counter; before each step sets LR, compressed/dense phase, and masks (through the criterion)."""

    def __init__(
        self,
        recipe: Any,
        registry: MaskRegistry,
        optimizer: Optimizer,
        steps_per_epoch: int,
        criterion: Optional[Criterion] = None,
        on_masks_updated: Optional[Callable[[], None]] = None,
        will_attach: bool = False,
        defer: bool = False,
    ) -> None:
        """``will_attach``: the caller gives a data-driven criterion its :class:`~dstrain.sparsity.criterion.DataHooks`
        before the first step (the trainer does); without it such a criterion is refused here.
        ``defer``: make the step-0 masks at the first :meth:`begin_step`, not here (ZeRO-3: the
        registry's partitions exist only once DeepSpeed has partitioned the model)."""
        self.recipe = recipe
        self.registry = registry
        self.optimizer = optimizer
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = recipe.total_steps(steps_per_epoch)
        self.sparsity = build_sparsity_schedule(recipe, steps_per_epoch)
        self.lr = build_lr_schedule(recipe, steps_per_epoch, self.sparsity)
        self.criterion = criterion or build_criterion(recipe.pruning, registry)
        self.on_masks_updated = on_masks_updated
        self.step_count = 0
        self.history: List[Dict[str, float]] = []
        self._last_lr = [self.lr(0)]
        # A data-driven criterion (oBERT) needs the engine and data, which do not exist yet:
        # its first mask update waits for the first begin_step(), after the trainer attached it.
        if self.criterion.needs_data and not will_attach:
            raise ConfigError("pruning.criterion", f"{self.criterion.name} needs gradients of the training loss or "
                              "calibration inputs, which only dstrain's DeepSpeed trainer collects (SparseTrainer, "
                              "launch/train.py)",
                              "train with SparseTrainer, or use criterion: magnitude here")
        deferred = self.criterion.needs_data or defer
        self._pending = False
        self._prepare(0, recompute=not deferred)
        self._pending = deferred

    # --- per-step control -----------------------------------------------------------
    @property
    def last_step_compressed(self) -> bool:
        """Phase of the optimizer step taken last."""
        return self.sparsity.is_compressed(max(self.step_count - 1, 0))

    def _prepare(self, step: int, recompute: bool) -> None:
        if recompute and self.sparsity.updates_mask(step):
            sparsity = self.sparsity.target(step)
            flips = self.criterion.update(sparsity, step)
            self.history.append({"step": step, "sparsity": sparsity, "mask_change_rate": flips})
            if self.on_masks_updated is not None:
                self.on_masks_updated()
        compressed = self.sparsity.is_compressed(step)
        decompressing = recompute and step > 0 and not compressed and self.sparsity.is_compressed(step - 1)
        if decompressing and getattr(self.recipe.pruning.schedule, "reset_momentum", False):
            self.optimizer.reset_momentum()
        if hasattr(self.optimizer, "masking_enabled"):
            self.optimizer.masking_enabled = compressed
        lr = self.lr(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self._last_lr = [lr] * len(self.optimizer.param_groups)

    def step(self, **_: Any) -> None:
        """Called after each applied optimizer step: advance the clock."""
        self.step_count += 1
        self._pending = True

    def begin_step(self) -> None:
        """Before the forward pass of a step: recompute masks, set phase and LR, if not done yet."""
        if self._pending:
            self._pending = False
            self._prepare(self.step_count, recompute=True)

    def get_last_lr(self) -> List[float]:
        return list(self._last_lr)

    get_lr = get_last_lr

    @property
    def finished(self) -> bool:
        return self.step_count >= self.total_steps

    # --- persistence (DeepSpeed saves this with the checkpoint) -----------------------
    def state_dict(self) -> Dict[str, Any]:
        return {"step_count": self.step_count, "history": list(self.history),
                "masks": self.registry.state_dict(), "pending": self._pending}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.registry.load_state_dict(state["masks"])
        self.step_count = int(state["step_count"])
        self.history = list(state["history"])
        # A checkpoint taken between step() and begin_step() still owes the next step's set-up
        # (mask update, momentum reset): leave it to begin_step(), after DeepSpeed has also
        # restored the optimizer state, which it may do after this call (ZeRO partitions).
        self._pending = bool(state.get("pending", False))
        if not self._pending:
            self._prepare(self.step_count, recompute=False)
        if self.on_masks_updated is not None:
            self.on_masks_updated()
