"""Stop a run that diverged, before it writes a non-finite checkpoint or reports a wrong result.

Why: a run at ``lr=1e6`` trained on NaN weights to the end and exited 0, with non-finite
tensors in every checkpoint and ``global_sparsity=0.0`` on a 90 % recipe (magnitude pruning
prunes nothing among NaNs); under bf16, DeepSpeed skipped every optimizer step whose
gradients overflowed, so the run stopped advancing after 3 of 66 steps and still exited 0.

What it watches (``training.guard`` in the recipe):

* the training loss of every micro-batch, accumulated on the device as one "all finite" flag
  (no synchronisation per step), read every ``check_every`` optimizer steps, before every
  evaluation and before every checkpoint;
* the parameters (and DeepSpeed's fp32 master partitions) at the same moments, and always
  before a checkpoint is written, so no checkpoint ever holds a non-finite weight;
* optimizer steps that DeepSpeed skipped (gradient overflow): counted in the metrics, and
  once at least ``min_steps`` steps were attempted, a run that skipped more than
  ``max_skipped_fraction`` of them stops.

Every rank decides from the same all-reduced numbers, so all ranks stop together.
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch
import torch.distributed as dist

from dstrain.errors import ConfigError


class TrainingDiverged(ConfigError):
    """The run stopped because its loss or weights became non-finite, or too many steps were skipped."""


class DivergenceGuard:
    def __init__(self, spec, device: torch.device, lr: float, checkpoint_of: Callable[[], Optional[str]]) -> None:
        self.check_every = int(spec.check_every)
        self.max_skipped_fraction = float(spec.max_skipped_fraction)
        self.min_steps = int(spec.min_steps)
        self.device = device
        self.lr = lr
        self.checkpoint_of = checkpoint_of  # the newest complete checkpoint, for the message
        self._loss_ok = torch.ones((), dtype=torch.bool, device=device)
        self.attempted = 0  # optimizer-step boundaries reached
        self.skipped = 0  # of which DeepSpeed skipped the update
        self.skipped_this_epoch = 0
        self._last_good_step = 0

    # --- per step (no synchronisation) ----------------------------------------------
    def observe_loss(self, loss: torch.Tensor) -> None:
        self._loss_ok &= torch.isfinite(loss.detach()).all()

    def step_boundary(self, advanced: bool) -> None:
        """At every gradient-accumulation boundary: did DeepSpeed apply the optimizer step?"""
        self.attempted += 1
        if not advanced:
            self.skipped += 1
            self.skipped_this_epoch += 1

    def due(self) -> bool:
        """Every ``check_every`` attempted steps (not applied ones: a run whose steps are all skipped
        never advances its step count)."""
        return self.check_every > 0 and self.attempted > 0 and self.attempted % self.check_every == 0

    # --- checks (synchronise) ----------------------------------------------------------
    def check(self, step: int, tensors: Iterable[torch.Tensor]) -> None:
        """Raise :class:`TrainingDiverged` if the loss or a weight became non-finite, or too many steps were skipped."""
        finite = [torch.isfinite(t).all() for t in tensors if t.is_floating_point() and t.numel()]
        weights_ok = bool(torch.stack(finite).all()) if finite else True  # one synchronisation for all tensors
        flags = torch.tensor([float(bool(self._loss_ok)), float(weights_ok), float(self.skipped), float(self.attempted)],
                             dtype=torch.float64)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            world_flags = flags.to(self.device) if self.device.type == "cuda" else flags
            dist.all_reduce(world_flags, op=dist.ReduceOp.MIN)
            flags = world_flags.cpu()
        loss_ok, weights_ok, skipped, attempted = bool(flags[0]), bool(flags[1]), int(flags[2]), int(flags[3])
        checkpoint = self.checkpoint_of() or "none written yet"
        cause = (f"the learning rate may be too high (optimizer.lr={self.lr:g})"
                 if self.lr else "the data or the model may hold non-finite values")
        fix = (f"lower optimizer.lr, add lr_schedule.warmup or set training.grad_clip, then start over with "
               f"--overwrite (newest finite checkpoint: {checkpoint})")
        if not loss_ok or not weights_ok:
            what = "the training loss" if not loss_ok else "a weight or a BatchNorm statistic"
            raise TrainingDiverged("training", f"diverged: {what} became non-finite between step "
                                   f"{self._last_good_step} and step {step}; {cause}", fix)
        if attempted >= self.min_steps and skipped > self.max_skipped_fraction * attempted:
            raise TrainingDiverged("training.guard.max_skipped_fraction",
                                   f"DeepSpeed skipped {skipped} of {attempted} optimizer steps by step {step} "
                                   f"(non-finite gradients: loss-scale overflow); {cause}", fix)
        self._last_good_step = step

    def end_epoch(self) -> int:
        """The steps skipped this epoch (for the metrics row), and a fresh count for the next."""
        count, self.skipped_this_epoch = self.skipped_this_epoch, 0
        return count
