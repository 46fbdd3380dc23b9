"""Sparse training on a DeepSpeed engine: one loop for vision pre-training and BERT fine-tuning.

The trainer wires a :class:`~dstrain.tasks.Task` (model, data, metrics) to a recipe:
masks (:class:`~dstrain.sparsity.registry.MaskRegistry`) chosen by the recipe's
criterion, a masked optimizer, and the :class:`~dstrain.sparsity.controller.SparsityController`
that DeepSpeed steps as its LR scheduler.  DeepSpeed does data parallelism, ZeRO, mixed
precision and checkpoint I/O; this module decides what to run and when to save.  The
pieces live beside it: loaders (:mod:`.loaders`), the run folder (:mod:`.rundir`),
checkpoints (:mod:`.checkpoints`), logs and metrics (:mod:`.logbook`).
"""
from __future__ import annotations

import json
import time
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from dstrain import distributed as dstdist
from dstrain.distill import distillation_loss, squarehead_loss
from dstrain.errors import ConfigError
from dstrain.recipe import Recipe, check_schedule_positions
from dstrain.run import resume as dstresume
from dstrain.run.checkpoints import CheckpointStore
from dstrain.run.clock import TrainingClock
from dstrain.run.dsconfig import precision, resolve_ds_config, zero_stage
from dstrain.run.engine import PartitionedTeacher, build_engine, whole_model
from dstrain.run.guard import DivergenceGuard
from dstrain.run.loaders import build_loaders, epoch_batches, gradient_batches
from dstrain.run.lock import RunLock
from dstrain.run.logbook import Logbook
from dstrain.run.manifest import read_manifest
from dstrain.run.options import TrainerCallback, TrainerOptions
from dstrain.run.placement import (
    frozen_teacher,
)
from dstrain.run.preflight import check_run_options
from dstrain.run.rundir import RunDir
from dstrain.run.seeding import capture_rng, restore_rng, seed_everything
from dstrain.sparsity.criterion import DataHooks
from dstrain.tasks import Task, build_task


class SparseTrainer:
    """Trains ``task`` under ``recipe`` with a DeepSpeed engine; see :meth:`train`."""

    def __init__(self, recipe: Recipe, options: TrainerOptions, task: Optional[Task] = None,
                 callbacks: Sequence[TrainerCallback] = ()) -> None:
        self.recipe = recipe
        self.options = options
        self.callbacks = list(callbacks)
        self.task = task or build_task(recipe.task)
        self.run_dir = RunDir(options.output_dir)
        self.output_dir = self.run_dir.root

    # --- set-up -------------------------------------------------------------------------
    def _build(self) -> None:
        recipe, options = self.recipe, self.options
        self.rank, self.world, self.device = dstdist.rank(), dstdist.world_size(), dstdist.device()
        self.logbook = Logbook(self.run_dir, self.rank == 0)
        self.log = self.logbook.log
        self.clock = TrainingClock(self.device)
        seed_everything(recipe.training.seed)
        train_set, eval_set = self.task.build_datasets()
        model = self.task.build_model().to(self.device)
        self.ds_config = resolve_ds_config(options.ds_config, recipe, self.world, self.device.type)
        self.zero_stage = zero_stage(self.ds_config)
        self.gas = self.ds_config["gradient_accumulation_steps"]
        self.loaders = build_loaders(self.task, train_set, eval_set, recipe, self.ds_config["train_micro_batch_size_per_gpu"],
                                     self.gas, self.rank, self.world, options.num_workers, self.device)
        self.train_loader, self.eval_loader = self.loaders.train, self.loaders.eval
        self.steps_per_epoch = self.loaders.steps_per_epoch
        # step-unit schedule positions can only be checked now that an epoch's length is known
        check_schedule_positions(recipe, f"recipe {recipe.name}", self.steps_per_epoch)

        built = build_engine(model, self.task, recipe, self.ds_config, self.steps_per_epoch, self.zero_stage,
                             self.device, self.log)
        self.engine, self.optimizer, self.client_optimizer = built.engine, built.optimizer, built.client_optimizer
        self.registry, self.criterion, self.controller = built.registry, built.criterion, built.controller
        self.partition_masks, self.weights_channels_last = built.partition_masks, built.weights_channels_last
        self.teacher = self._build_teacher()
        self.guard = DivergenceGuard(recipe.training.guard, self.device, recipe.optimizer.lr, self._newest_checkpoint)
        if self.criterion.needs_data:
            settings = self.criterion.settings
            batch = getattr(settings, "grad_batch_size", None) or recipe.training.batch_size
            batches = gradient_batches(self.task, train_set, batch, recipe.training.seed + 1, self.rank, self.world,
                                       f"pruning.{self.criterion.name}.grad_batch_size")
            self.criterion.attach(DataHooks(self.engine.module, lambda b: self._loss(b, self.engine.module),
                                            batches, self.partition_masks.write_masters,
                                            getattr(self.task, "calibration_sequences", None)))

    def _build_teacher(self) -> Optional[nn.Module]:
        spec = self.recipe.distillation
        if spec is None:
            return None
        dtype = next(self.engine.module.parameters()).dtype
        teacher = frozen_teacher(self.task.build_teacher(spec.teacher), self.device, dtype)
        return PartitionedTeacher(teacher, self.ds_config) if self.zero_stage == 3 else teacher

    # --- one step ------------------------------------------------------------------------
    def _loss(self, batch: Any, model: Optional[nn.Module] = None) -> torch.Tensor:
        """Training loss (with distillation); ``model`` = the bare module for a criterion's gradient collection."""
        spec = self.recipe.distillation
        features = self.teacher is not None and spec.squarehead > 0  # SquareHead needs per-layer features
        forward = self.task.forward_with_features if features else self.task.forward
        out = forward(self.engine if model is None else model, batch, self.device)
        loss = self.task.loss(out[0], out[1])
        if self.teacher is not None:
            with torch.no_grad():
                teacher_out = forward(self.teacher, batch, self.device)
            loss = distillation_loss(out[0], teacher_out[0], loss, spec.alpha, spec.temperature)
            if features:
                # normalised over the global batch in the training step; a criterion's own mini-batches are per rank
                loss = loss + spec.squarehead * squarehead_loss(out[2], teacher_out[2], average_over_ranks=model is None)
        return loss

    # --- evaluation ------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> Dict[str, float]:
        dstdist.average_buffers(self.engine.module)
        self.engine.eval()
        logits_all, labels_all = [], []
        for batch in self.eval_loader:
            logits, labels = self.task.eval_forward(self.engine, batch, self.device)
            logits_all.append(logits.float().cpu())
            labels_all.append(labels.cpu())
        self.engine.train()
        local = (torch.cat(logits_all) if logits_all else torch.empty(0),
                 torch.cat(labels_all) if labels_all else torch.empty(0, dtype=torch.long))
        gathered = dstdist.all_gather_objects(local)
        logits = torch.cat([g[0] for g in gathered if g[0].numel()])
        labels = torch.cat([g[1] for g in gathered if g[1].numel()])
        metrics = self.task.metrics(logits, labels)
        if "loss" not in metrics:  # a task that gathers per-example sums reports its loss itself
            metrics["loss"] = float(self.task.loss(logits, labels))
        return metrics

    # --- checkpoints -----------------------------------------------------------------------
    def _client_state(self, epoch: int, batch_in_epoch: int) -> Dict[str, Any]:
        # Position in optimizer steps, not micro-batches: valid after a change of world size.
        # The partial epoch's loss sums make its train_loss identical after a resume.
        return {"epoch": epoch, "steps_in_epoch": batch_in_epoch // self.gas, "rng": capture_rng(),
                "recipe": self.recipe.model_dump(), "metrics_log": self.logbook.rows,
                "epoch_loss": (self._loss_sum.detach().cpu().clone(), self._loss_n) if batch_in_epoch else None,
                # per rank (only rank 0's client state is saved): the epoch's count over all ranks survives
                "epoch_skipped": dstdist.all_gather_objects(self._skipped) if batch_in_epoch else None}

    @property
    def _layout(self) -> Dict[str, Any]:
        """What a checkpoint's optimizer state depends on (checked before resuming)."""
        return {"world_size": self.world, "zero_stage": self.zero_stage, "precision": precision(self.ds_config)}

    def _newest_checkpoint(self) -> Optional[str]:
        found = self.checkpoints.complete() if hasattr(self, "checkpoints") else []
        return str(found[-1][1]) if found else None

    def _check_finite(self) -> None:
        """The divergence guard's check over the model's weights and buffers (BatchNorm statistics overflow
        before the weights do) and DeepSpeed's fp32 masters (all ranks)."""
        module = self.engine.module
        masters = [master for master, _ in self.partition_masks.masters_and_masks()]
        self.guard.check(self.controller.step_count, [*module.parameters(), *module.buffers(), *masters])

    def _save(self, epoch: int, batch_in_epoch: int) -> None:
        self._check_finite()  # a checkpoint never holds a non-finite weight
        with self.clock.paused():  # kept out of the throughput figure
            dstdist.average_buffers(self.engine.module)
            info = {"recipe": self.recipe.model_dump(mode="json"), "mask_sparsity": self.registry.mask_sparsity()}
            self.checkpoints.save(self.engine, self.controller.step_count, self._client_state(epoch, batch_in_epoch),
                                  self._layout, info)

    def _maybe_resume(self) -> Tuple[int, int]:
        path = self.checkpoints.resolve(self.options.resume)
        if path is None:
            return 0, 0
        self.checkpoints.check_layout(path, self._layout)
        manifest = read_manifest(path)  # verified by resolve (all files, before any is read)
        dstresume.check_recipe(path, manifest.get("recipe", {}), self.recipe.model_dump(mode="json"))
        state = self.checkpoints.load(self.engine, path)
        saved_sparsity, sparsity = manifest.get("mask_sparsity"), self.registry.mask_sparsity()
        if saved_sparsity is not None and abs(saved_sparsity - sparsity) > 1e-9:  # belt and braces after hashes
            raise ConfigError("--resume", f"{path}: loaded masks have sparsity {sparsity:.6f}, the checkpoint "
                              f"recorded {saved_sparsity:.6f}", "resume from another checkpoint")
        restore_rng(state["rng"])
        self.logbook.rows = list(state.get("metrics_log", []))
        if state.get("epoch_loss") is not None:
            loss_sum, loss_n = state["epoch_loss"]
            self._loss_sum, self._loss_n = loss_sum.to(self.device), int(loss_n)
        counts = state.get("epoch_skipped")
        if counts is not None and any(c is not None for c in counts):
            # same world size: each rank its own count; another world size: the total on rank 0
            same = len(counts) == self.world
            self._skipped = counts[self.rank] if same else (sum(c or 0 for c in counts) if self.rank == 0 else 0)
        self.log(f"resumed from {path} at step {self.controller.step_count}")
        return int(state["epoch"]), int(state["steps_in_epoch"]) * self.gas

    # --- the loop --------------------------------------------------------------------------
    def train(self) -> Dict[str, Any]:
        start_time = time.time()
        opts = self.options
        check_run_options(opts.save_every, opts.max_steps, opts.num_workers, opts.keep_last, opts.resume,
                          opts.overwrite)
        self.run_dir.check_writable()
        dstdist.init_distributed()
        self.lock = RunLock(self.run_dir.lock)
        dstdist.on_main_or_raise(self.lock.acquire)  # one run per folder, checked before anything is deleted
        try:
            return self._train(start_time)
        finally:
            if dstdist.is_main():
                self.lock.release()

    def _train(self, start_time: float) -> Dict[str, Any]:
        opts = self.options
        self.run_dir.guard_fresh_run(opts.resume, opts.overwrite, dstdist.is_main())
        self._build()
        self.checkpoints = CheckpointStore(self.run_dir.checkpoints, opts.keep_last, self.log)
        self._loss_sum, self._loss_n = torch.zeros((), device=self.device), 0
        self._skipped: Optional[int] = None  # unreadable examples skipped this epoch (tasks that skip)
        dstdist.on_main_or_raise(lambda: self.run_dir.write(self.run_dir.recipe,
                                                            json.dumps(self.recipe.model_dump(), indent=2)))
        start_epoch, skip_batches = self._maybe_resume()
        total = self.controller.total_steps
        epochs = -(-total // self.steps_per_epoch)
        self.logbook.open(self.controller.step_count, total, self.recipe.name, opts.progress, opts.tensorboard)
        try:
            stop = self._epochs(start_epoch, epochs, skip_batches)
        finally:
            self.logbook.close()
        return self._finish(stop, time.time() - start_time)

    def _epochs(self, start_epoch: int, epochs: int, skip_batches: int) -> bool:
        """Every epoch from ``start_epoch``; True if ``max_steps`` stopped the run early."""
        opts = self.options
        if opts.max_steps == 0:
            self._evaluate_only(start_epoch, skip_batches)
            return False
        stop = False
        for epoch in range(start_epoch, epochs):
            self.clock.start()
            stop, done = self._train_epoch(epoch, skip_batches)
            self.clock.stop()
            skip_batches = 0
            all_batches = done == self.steps_per_epoch * self.gas
            # an epoch is over unless max_steps cut it short (the last one may end with the recipe)
            if (not stop or all_batches) and ((epoch + 1) % self.recipe.training.eval_every == 0 or epoch + 1 == epochs):
                self._end_of_epoch(epoch)
            if stop:  # a checkpoint to resume from, at the exact data position
                self._save(*((epoch + 1, 0) if all_batches else (epoch, done)))
                break
            if opts.save_every or epoch + 1 == epochs:
                self._save(epoch + 1, 0)
        return stop

    def _evaluate_only(self, epoch: int, skip_batches: int) -> None:
        """``max_steps`` 0: the mask updates due before the next step (a one-shot prune at step 0), one
        evaluation and a checkpoint, no optimizer step; the run finishes (and exports) as trained."""
        self.controller.begin_step()
        self._check_finite()
        metrics = self.evaluate()
        self.logbook.record({"epoch": epoch, "step": self.controller.step_count, "train_loss": None,
                             **{f"val_{k}": v for k, v in metrics.items()},
                             "sparsity": self.registry.weight_sparsity(), "mask_sparsity": self.registry.mask_sparsity(),
                             "layer_sparsity": self.registry.layer_sparsity()})
        self.log(f"evaluation only (max_steps 0) at step {self.controller.step_count}: val_{self.task.primary_metric}="
                 f"{metrics[self.task.primary_metric]:.4f} sparsity={self.registry.weight_sparsity():.4f}")
        self._save(epoch, skip_batches)

    def _train_epoch(self, epoch: int, skip_batches: int) -> Tuple[bool, int]:
        """Micro-batches of one epoch from ``skip_batches`` on (after a resume).

        Returns (stop requested by max_steps, micro-batches of the epoch done); the
        epoch's loss sum and count are in ``self._loss_sum``/``_loss_n`` (checkpointed).
        """
        self.loaders.train_sampler.set_epoch(epoch)
        micro_per_epoch = self.steps_per_epoch * self.gas
        done = skip_batches
        if not skip_batches:
            self._loss_sum, self._loss_n, self._skipped = torch.zeros((), device=self.device), 0, None
        for micro_idx, batch in epoch_batches(self.loaders, skip_batches):
            if micro_idx >= micro_per_epoch or self.controller.finished:
                break
            skipped = self.task.skipped_in_batch(batch)
            if skipped is not None:
                self._skipped = (self._skipped or 0) + int(skipped)
            self.controller.begin_step()
            loss = self._loss(batch)
            self.guard.observe_loss(loss)
            self.engine.backward(loss)
            step_before = self.controller.step_count
            self.engine.step()
            self._loss_sum += loss.detach().float()
            self._loss_n += 1
            done = micro_idx + 1
            if done % self.gas:
                continue
            self.guard.step_boundary(advanced=self.controller.step_count > step_before)
            if self.guard.due():
                self._check_finite()
            if self.rank == 0:
                self.lock.heartbeat()
            self.clock.step_done()
            for callback in self.callbacks:
                callback.on_step_end(self)
            step = self.controller.step_count
            self.logbook.step_done()
            if self.logbook.progress is not None and step % 10 == 0:  # .item() waits for the device
                self.logbook.step_postfix(loss.item(), self.controller.get_last_lr()[0])
            if self.options.save_every and step % self.options.save_every == 0 and done < micro_per_epoch:
                self._save(epoch, done)
            if self.options.max_steps is not None and step >= self.options.max_steps:
                return True, done
        return False, done

    def _end_of_epoch(self, epoch: int) -> None:
        self._check_finite()
        metrics = self.evaluate()
        train_loss = float(self._loss_sum) / max(self._loss_n, 1)
        # mask updates made before the steps of this epoch: t in [epoch*spe, (epoch+1)*spe)
        flips = [h["mask_change_rate"] for h in self.controller.history
                 if epoch * self.steps_per_epoch <= h["step"] < (epoch + 1) * self.steps_per_epoch]
        row = {"epoch": epoch + 1, "step": self.controller.step_count, "train_loss": train_loss,
               **{f"val_{k}": v for k, v in metrics.items()},
               "sparsity": self.registry.weight_sparsity(), "mask_sparsity": self.registry.mask_sparsity(),
               "compressed": self.controller.last_step_compressed, "lr": self.controller.get_last_lr()[0],
               "mask_change_rate": (sum(flips) / len(flips)) if flips else None,
               "layer_sparsity": self.registry.layer_sparsity(), "skipped_steps": self.guard.end_epoch()}
        counts = [c for c in dstdist.all_gather_objects(self._skipped) if c is not None]
        if counts:  # bad_images: skip — unreadable training images skipped this epoch, all ranks
            row["skipped_images"] = sum(counts)
        self.logbook.record(row)
        self.log(f"epoch {epoch + 1}: train_loss={train_loss:.4f} val_{self.task.primary_metric}="
                 f"{metrics[self.task.primary_metric]:.4f} sparsity={row['sparsity']:.4f}")

    def _finish(self, stopped_early: bool, wall_time_s: float) -> Dict[str, Any]:
        """The run's result (written to result.json by rank 0, with the task's export of a finished run)."""
        final = self.logbook.rows[-1] if self.logbook.rows else {}
        result = {
            "recipe": self.recipe.name, "steps": self.controller.step_count, "stopped_early": stopped_early,
            "metric": self.task.primary_metric, "score": final.get(f"val_{self.task.primary_metric}"),
            "sparsity": self.registry.weight_sparsity(), "revived": self.registry.revived(),
            "wall_time_s": wall_time_s, "world_size": self.world, "skipped_steps": self.guard.skipped,
            # training loop only (no evaluation, checkpoints or set-up), all ranks together
            **self.clock.rates(self.recipe.training.batch_size),
            **self.criterion.result(),
        }
        if not stopped_early:
            with whole_model(self.engine, self.zero_stage) as module:  # every rank: a ZeRO-3 gather
                if self.rank == 0 and self.task.export(module, str(self.run_dir.final_model)):
                    result["exported_to"] = str(self.run_dir.final_model)
        dstdist.on_main_or_raise(lambda: self.run_dir.write(self.run_dir.result, json.dumps(result, indent=2)))
        return result


__all__ = ["SparseTrainer", "TrainerOptions", "TrainerCallback"]
