"""Sparse training on a DeepSpeed engine: one loop for vision pre-training and BERT fine-tuning.

The trainer wires a :class:`~dstrain.tasks.Task` (model, data, metrics) to a
recipe: masks (:class:`~dstrain.masks.MaskRegistry`), a masked optimizer, and the
:class:`~dstrain.controller.SparsityController` that DeepSpeed steps as its LR
scheduler.  DeepSpeed does data parallelism, ZeRO, mixed precision and
checkpoint I/O; this module only decides what to run and when to save.
"""
from __future__ import annotations

import copy
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from . import checkpoint as ckpt
from . import distributed as dstdist
from . import resume as dstresume
from .controller import SparsityController
from .dsconfig import validate_ds_config
from .errors import ConfigError
from .manifest import read_manifest
from .masks import MaskRegistry, match_parameter_names
from .optim import MaskedAdamW, MaskedSGD
from .preflight import check_output_dir, check_run_options
from .recipe import Recipe, check_schedule_positions
from .tasks import Task, build_task
from .throughput import TrainingClock
from .zero import PartitionMasks


@dataclass
class TrainerOptions:
    """Run-level options (not part of the recipe: where and how, not what)."""

    output_dir: Path
    ds_config: Dict[str, Any] = field(default_factory=dict)
    save_every: int = 0  # optimizer steps between checkpoints; 0 = at each evaluation only
    keep_last: int = 2
    resume: Optional[str] = None  # None | "auto" | checkpoint folder
    max_steps: Optional[int] = None  # stop early (after a checkpoint), e.g. to test resume
    progress: bool = True
    tensorboard: bool = True
    num_workers: int = 0
    overwrite: bool = False  # a fresh run may discard checkpoints already in output_dir


class TrainerCallback:
    """Hooks into the loop (like transformers' TrainerCallback); override what you need."""

    def on_step_end(self, trainer: "SparseTrainer") -> None:
        """After every applied optimizer step (and the recipe scheduler's update)."""


class _ShardSampler(Sampler):
    """Evaluation sampler: rank r takes indices r, r+W, ...; no padding so metrics are exact."""

    def __init__(self, n: int, rank: int, world: int) -> None:
        self.indices = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _capture_rng() -> Dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _restore_rng(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_ds_config(ds_config: Dict[str, Any], recipe: Recipe, world: int) -> Dict[str, Any]:
    """Fill batch sizes from the recipe; refuse combinations DeepSpeed would reject later, obscurely."""
    cfg = copy.deepcopy(validate_ds_config(ds_config))
    global_batch = recipe.training.batch_size
    given = cfg.get("train_batch_size", "auto")
    if given not in ("auto", None) and int(given) != global_batch:
        raise ConfigError("ds_config.train_batch_size",
                          f"{given} differs from the recipe's training.batch_size ({global_batch})",
                          'set it to "auto" (the recipe decides) or make them equal')
    cfg["train_batch_size"] = global_batch
    gas = cfg.get("gradient_accumulation_steps", "auto")
    micro = cfg.get("train_micro_batch_size_per_gpu", "auto")
    if gas in ("auto", None):
        gas = 1 if micro in ("auto", None) else max(1, global_batch // (int(micro) * world))
    if micro in ("auto", None):
        micro = global_batch // (int(gas) * world)
    if int(micro) * int(gas) * world != global_batch or int(micro) < 1:
        raise ConfigError("ds_config.train_micro_batch_size_per_gpu",
                          f"micro batch {micro} x accumulation {gas} x {world} processes != batch_size {global_batch}",
                          "pick a batch_size divisible by the number of processes, or set both to auto")
    cfg["gradient_accumulation_steps"] = int(gas)
    cfg["train_micro_batch_size_per_gpu"] = int(micro)
    stage = cfg.get("zero_optimization", {}).get("stage", 0)
    if stage == 3:
        raise ConfigError("ds_config.zero_optimization.stage",
                          "ZeRO stage 3 is not supported: parameters are gathered on the fly, so masks "
                          "cannot be applied in the fused optimizer step",
                          "use stage 1 or 2 (optimizer state and gradients are still partitioned)")
    if "optimizer" in cfg or "scheduler" in cfg:
        raise ConfigError("ds_config.optimizer", "the optimizer and LR schedule come from the recipe",
                          "remove 'optimizer' and 'scheduler' from ds_config.json")
    cfg["gradient_clipping"] = _gradient_clipping(cfg, recipe)
    if stage in (1, 2):
        cfg.setdefault("zero_allow_untested_optimizer", True)
    cfg.setdefault("steps_per_print", 10**9)
    return cfg


def _gradient_clipping(cfg: Dict[str, Any], recipe: Recipe) -> float:
    """The recipe's ``training.grad_clip`` as DeepSpeed's ``gradient_clipping`` (0.0 = off).

    Written explicitly because DeepSpeed clips at 1.0 when the key is absent: a config
    that merely omits it would otherwise train differently from one that sets 0.0.
    A config that sets another value is refused rather than silently overridden.
    """
    want = float(recipe.training.grad_clip or 0.0)
    given = cfg.get("gradient_clipping")
    if given is not None and float(given) != want:
        recipe_value = "none" if recipe.training.grad_clip is None else f"{want:g}"
        raise ConfigError("ds_config.gradient_clipping",
                          f"{given} differs from the recipe's training.grad_clip ({recipe_value})",
                          "remove gradient_clipping from the ds_config (the recipe decides) or set "
                          "training.grad_clip in the recipe to match")
    return want


def parameter_groups(model: nn.Module, recipe: Recipe) -> List[Dict[str, Any]]:
    """One group with the recipe's weight decay, and one without for ``optimizer.no_weight_decay`` matches."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    exempt = match_parameter_names([n for n, _ in named], recipe.optimizer.no_weight_decay,
                                   "optimizer.no_weight_decay")
    groups = [{"params": [p for n, p in named if n not in exempt]},
              {"params": [p for n, p in named if n in exempt], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    spec = recipe.optimizer
    groups = parameter_groups(model, recipe)
    if spec.name == "sgd":
        return MaskedSGD(groups, lr=spec.lr, momentum=spec.momentum, dampening=spec.dampening,
                         weight_decay=spec.weight_decay, nesterov=spec.nesterov, backend=spec.backend)
    return MaskedAdamW(groups, lr=spec.lr, betas=spec.betas, eps=spec.eps,
                       weight_decay=spec.weight_decay, backend=spec.backend)


class SparseTrainer:
    """Trains ``task`` under ``recipe`` with a DeepSpeed engine; see :meth:`train`."""

    def __init__(self, recipe: Recipe, options: TrainerOptions, task: Optional[Task] = None,
                 callbacks: Sequence["TrainerCallback"] = ()) -> None:
        self.recipe = recipe
        self.callbacks = list(callbacks)
        self.options = options
        self.task = task or build_task(recipe.task)
        self.output_dir = Path(options.output_dir)

    # --- set-up -------------------------------------------------------------------------
    def _build(self) -> None:
        import deepspeed

        dstdist.init_distributed()
        self.rank, self.world = dstdist.rank(), dstdist.world_size()
        self.device = dstdist.device()
        self.clock = TrainingClock(self.device)
        _seed_everything(self.recipe.training.seed)
        train_set, eval_set = self.task.build_datasets()
        model = self.task.build_model().to(self.device)
        self.ds_config = resolve_ds_config(self.options.ds_config, self.recipe, self.world)
        micro = self.ds_config["train_micro_batch_size_per_gpu"]
        self.zero_stage = int(self.ds_config.get("zero_optimization", {}).get("stage", 0))
        if self.device.type == "cpu" and self.ds_config.get("fp16", {}).get("enabled", False):
            raise ConfigError("ds_config.fp16.enabled", "DeepSpeed's fp16 path does not train on CPU "
                              "(loss stays at chance even for a dense model in our checks)",
                              'use "bf16": {"enabled": true} on CPU; fp16 with loss scaling is for GPUs')
        self.gas = self.ds_config["gradient_accumulation_steps"]

        # Loader workers: the run option wins; otherwise the task's own setting (e.g. ImageNet decoding).
        task_config = getattr(self.task, "config", None)
        workers = self.options.num_workers or int(getattr(task_config, "num_workers", 0))
        pin = getattr(task_config, "pin_memory", None)
        pin = self.device.type == "cuda" if pin is None else bool(pin)
        self.train_sampler = DistributedSampler(train_set, num_replicas=self.world, rank=self.rank,
                                                shuffle=True, seed=self.recipe.training.seed, drop_last=True)
        self.train_loader = DataLoader(train_set, batch_size=micro, sampler=self.train_sampler, drop_last=True,
                                       collate_fn=self.task.train_collate_fn or self.task.collate_fn,
                                       num_workers=workers,
                                       pin_memory=pin, persistent_workers=workers > 0)
        self.eval_loader = DataLoader(eval_set, batch_size=max(micro, 64),
                                      sampler=_ShardSampler(len(eval_set), self.rank, self.world),
                                      collate_fn=self.task.collate_fn, num_workers=workers)
        self.steps_per_epoch = len(self.train_loader) // self.gas
        if self.steps_per_epoch < 1:
            raise ConfigError("training.batch_size", f"{self.recipe.training.batch_size} is larger than "
                              f"the training set ({len(train_set)} examples)", "use a smaller batch_size")
        # step-unit schedule positions can only be checked now that an epoch's length is known
        check_schedule_positions(self.recipe, f"recipe {self.recipe.name}", self.steps_per_epoch)

        self.registry = MaskRegistry(model, self.recipe.pruning.selection())
        self._log_nm_dense_layers()
        client_optimizer = build_optimizer(model, self.recipe)
        client_optimizer.set_mask_source(self.registry.mask_for)
        self.pruner = None
        if self.recipe.pruning.criterion == "obert":
            from .obert_pruner import ObertPruner

            self.pruner = ObertPruner(self.recipe.pruning.obert, self.registry, self.recipe.pruning.scope)
        self.controller = SparsityController(self.recipe, self.registry, client_optimizer, self.steps_per_epoch,
                                             mask_updater=self.pruner.update if self.pruner else None)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=client_optimizer, lr_scheduler=self.controller, config=self.ds_config)
        self.client_optimizer = client_optimizer
        self._match_buffer_dtype()
        if getattr(task_config, "compile", False):
            # DeepSpeed compiles the forward in place; parameters (and so masks) are unchanged.
            self.engine.compile()
        # ZeRO-1/2 and mixed precision hand the optimizer flat fp32 partitions: give it their masks.
        self.partition_masks = PartitionMasks(self.optimizer, self.registry)
        self._apply_memory_format()
        client_optimizer.set_mask_source(self.partition_masks.mask_for)
        self.controller.on_masks_updated = self.partition_masks.refresh
        self.teacher = self._build_teacher()
        if self.pruner is not None:
            self._attach_pruner(train_set)

    def _attach_pruner(self, train_set) -> None:
        """Gradient source for oBERT: the training loss (with KD) on its own seeded shuffle of the training set."""
        spec = self.recipe.pruning.obert
        global_batch = spec.grad_batch_size or self.recipe.training.batch_size
        if global_batch % self.world or global_batch // self.world > len(train_set) // self.world:
            raise ConfigError("pruning.obert.grad_batch_size",
                              f"{global_batch} is not a multiple of the {self.world} process(es) or exceeds the "
                              f"training set ({len(train_set)} examples)", "pick a smaller multiple of the world size")
        per_rank = global_batch // self.world
        sampler = DistributedSampler(train_set, num_replicas=self.world, rank=self.rank, shuffle=True,
                                     seed=self.recipe.training.seed + 1, drop_last=True)
        loader = DataLoader(train_set, batch_size=per_rank, sampler=sampler, drop_last=True,
                            collate_fn=self.task.collate_fn)

        def batches(step: int):
            # Seeded by the recipe step: the same samples on any world size and after a resume.
            cycle = 0
            while True:
                sampler.set_epoch(step * 1000 + cycle)
                yield from loader
                cycle += 1

        self.pruner.attach(self.engine.module, lambda batch: self._loss(batch, self.engine.module), batches,
                           self.partition_masks.write_masters)

    def _log_nm_dense_layers(self) -> None:
        """An N:M pattern cannot cover layers whose reduction length is not a multiple of M: say which."""
        nm = self.recipe.pruning.nm
        if nm is None:
            return
        from .nm import dense_layers

        dense = dense_layers(self.registry, nm)
        self.nm_dense_layers = sorted(dense)
        if dense:
            listed = ", ".join(f"{n} {list(s)}" for n, s in dense.items())
            self._log(f"pattern {self.recipe.pruning.pattern}: {len(dense)} prunable layer(s) left dense "
                      f"(reduction length not a multiple of {nm[1]}): {listed}")
        else:
            self._log(f"pattern {self.recipe.pruning.pattern}: all {len(self.registry.params)} prunable layers are N:M")

    @torch.no_grad()
    def _apply_memory_format(self) -> None:
        """channels_last, applied after ``deepspeed.initialize`` and only where DeepSpeed keeps our parameters.

        Why after: DeepSpeed 0.19.8's ``_broadcast_model`` (inside ``initialize``) views
        every parameter as bytes and raises on channels-last weights ("stride(-1) must
        be 1"); 0.19.0-0.19.7 do not.  Converting afterwards works with every version,
        so setup.py need not exclude one (the GPU image carries 0.19.7).
        Why only there: under ZeRO-1/2 and bf16/fp16 DeepSpeed flattens each parameter
        group into one buffer and makes the weights contiguous views of it; a weight
        cannot be both such a view and channels-last.  There the weights stay
        contiguous and only the inputs (so the activations) are channels-last.
        ``setattr .data`` keeps each Parameter object, so the optimizer, the mask
        registry and DeepSpeed's references still point at the trained tensors.
        """
        self.weights_channels_last = False
        if not self.task.channels_last:
            return
        if self.partition_masks.flattened:
            self._log("channels_last: inputs only; DeepSpeed keeps the weights as contiguous views of its "
                      "flat buffers under ZeRO-1/2 and bf16/fp16 (see README)")
            return
        if self.recipe.optimizer.backend == "triton":  # the Triton kernels address flat, contiguous memory
            self._log("channels_last: inputs only; optimizer.backend triton steps contiguous weights (see README)")
            return
        for param in self.engine.module.parameters():
            if param.dim() == 4:
                param.data = param.data.contiguous(memory_format=torch.channels_last)
        self.registry.follow_param_layouts()
        self.weights_channels_last = True

    def _match_buffer_dtype(self) -> None:
        """DeepSpeed casts parameters, not buffers, to bf16/fp16; CPU batch_norm needs them to agree."""
        dtype = next(self.engine.module.parameters()).dtype
        if self.device.type != "cpu" or dtype == torch.float32:
            return
        for module in self.engine.module.modules():
            for name, buf in module.named_buffers(recurse=False):
                if buf.is_floating_point() and buf.dtype != dtype:
                    setattr(module, name, buf.to(dtype))

    def _build_teacher(self) -> Optional[nn.Module]:
        spec = self.recipe.distillation
        if spec is None:
            return None
        teacher = self.task.build_teacher(spec.teacher).to(self.device)
        dtype = next(self.engine.module.parameters()).dtype
        teacher.to(dtype).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        return teacher

    # --- one step ------------------------------------------------------------------------
    def _loss(self, batch: Any, model: Optional[nn.Module] = None) -> torch.Tensor:
        """Training loss (with distillation); ``model`` = the bare module for oBERT's gradient collection."""
        logits, labels = self.task.forward(self.engine if model is None else model, batch, self.device)
        loss = self.task.loss(logits, labels)
        if self.teacher is not None:
            from .distill import distillation_loss

            with torch.no_grad():
                teacher_logits, _ = self.task.forward(self.teacher, batch, self.device)
            spec = self.recipe.distillation
            loss = distillation_loss(logits, teacher_logits, loss, spec.alpha, spec.temperature)
        return loss

    # --- evaluation ------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> Dict[str, float]:
        dstdist.average_buffers(self.engine.module)
        self.engine.eval()
        logits_all, labels_all = [], []
        for batch in self.eval_loader:
            logits, labels = self.task.forward(self.engine, batch, self.device)
            logits_all.append(logits.float().cpu())
            labels_all.append(labels.cpu())
        self.engine.train()
        local = (torch.cat(logits_all) if logits_all else torch.empty(0),
                 torch.cat(labels_all) if labels_all else torch.empty(0, dtype=torch.long))
        gathered = dstdist.all_gather_objects(local)
        logits = torch.cat([g[0] for g in gathered if g[0].numel()])
        labels = torch.cat([g[1] for g in gathered if g[1].numel()])
        metrics = self.task.metrics(logits, labels)
        metrics["loss"] = float(self.task.loss(logits, labels))
        return metrics

    # --- checkpoints -----------------------------------------------------------------------
    def _client_state(self, epoch: int, batch_in_epoch: int) -> Dict[str, Any]:
        # Position in optimizer steps, not micro-batches: valid after a change of world size.
        # The partial epoch's loss sums make its train_loss identical after a resume.
        return {"epoch": epoch, "steps_in_epoch": batch_in_epoch // self.gas, "rng": _capture_rng(),
                "recipe": self.recipe.model_dump(), "metrics_log": self.metrics_log,
                "epoch_loss": (self._loss_sum.detach().cpu().clone(), self._loss_n) if batch_in_epoch else None,
                # per rank (only rank 0's client state is saved): the epoch's count over all ranks survives
                "epoch_skipped": dstdist.all_gather_objects(self._skipped) if batch_in_epoch else None}

    @property
    def _layout(self) -> Dict[str, int]:
        """What a checkpoint's optimizer shards depend on (checked before resuming)."""
        return {"world_size": self.world, "zero_stage": self.zero_stage}

    def _save(self, epoch: int, batch_in_epoch: int) -> None:
        with self.clock.paused():  # kept out of the throughput figure
            self._save_checkpoint(epoch, batch_in_epoch)

    def _save_checkpoint(self, epoch: int, batch_in_epoch: int) -> None:
        dstdist.average_buffers(self.engine.module)
        info = {"recipe": self.recipe.model_dump(mode="json"), "mask_sparsity": self.registry.mask_sparsity()}
        ckpt.save(self.engine, self.output_dir / "checkpoints", self.controller.step_count,
                  self._client_state(epoch, batch_in_epoch), self.options.keep_last, self._layout, info)

    def _maybe_resume(self) -> tuple:
        path = ckpt.resolve_resume(self.options.resume, self.output_dir / "checkpoints", self._log)
        if path is None:
            return 0, 0
        ckpt.check_layout(path, self._layout)
        manifest = read_manifest(path)  # verified by resolve_resume (all files, before any is read)
        dstresume.check_recipe(path, manifest.get("recipe", {}), self.recipe.model_dump(mode="json"))
        state = ckpt.load(self.engine, path)
        saved_sparsity, sparsity = manifest.get("mask_sparsity"), self.registry.mask_sparsity()
        if saved_sparsity is not None and abs(saved_sparsity - sparsity) > 1e-9:  # belt and braces after hashes
            raise ConfigError("--resume", f"{path}: loaded masks have sparsity {sparsity:.6f}, the checkpoint "
                              f"recorded {saved_sparsity:.6f}", "resume from another checkpoint")
        _restore_rng(state["rng"])
        self.metrics_log = list(state.get("metrics_log", []))
        if state.get("epoch_loss") is not None:
            loss_sum, loss_n = state["epoch_loss"]
            self._loss_sum, self._loss_n = loss_sum.to(self.device), int(loss_n)
        counts = state.get("epoch_skipped")
        if counts is not None and any(c is not None for c in counts):
            # same world size: each rank its own count; another world size: the total on rank 0
            same = len(counts) == self.world
            self._skipped = counts[self.rank] if same else (sum(c or 0 for c in counts) if self.rank == 0 else 0)
        self._log(f"resumed from {path} at step {self.controller.step_count}")
        return int(state["epoch"]), int(state["steps_in_epoch"]) * self.gas

    # --- logging ---------------------------------------------------------------------------
    def _log(self, text: str) -> None:
        if self.rank != 0:
            return
        if getattr(self, "_progress", None) is not None:
            self._progress.write(f"[dstrain] {text}")  # above the bar, not onto its line
        else:
            print(f"[dstrain] {text}", flush=True)

    def _tensorboard_writer(self):
        """One event-file set per run, like metrics.jsonl.

        A fresh run deletes the event files an earlier run left in the folder (five reruns
        showed five overlapping curves); a resumed run keeps them and tells TensorBoard to
        drop their events from the resumed step on (``purge_step``), so a crash after the
        last checkpoint leaves no doubled stretch.
        """
        from torch.utils.tensorboard import SummaryWriter

        tb_dir = self.output_dir / "tb"
        step = self.controller.step_count
        if step == 0:
            for old in tb_dir.glob("events.out.tfevents.*"):
                old.unlink()
        return SummaryWriter(str(tb_dir), purge_step=step or None)

    def _record(self, row: Dict[str, Any]) -> None:
        self.metrics_log.append(row)
        if self.rank != 0:
            return
        with open(self.output_dir / "metrics.jsonl", "w") as f:
            for r in self.metrics_log:
                f.write(json.dumps(r) + "\n")
        if self.writer is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key not in ("epoch", "step"):
                    self.writer.add_scalar(key, value, row["step"])
            self.writer.flush()

    # --- the loop --------------------------------------------------------------------------
    def train(self) -> Dict[str, Any]:
        start_time = time.time()
        opts = self.options
        check_run_options(opts.save_every, opts.max_steps, opts.num_workers, opts.keep_last)
        check_output_dir(self.output_dir)
        dstdist.init_distributed()
        dstresume.guard_output_dir(self.output_dir, opts.resume, opts.overwrite, dstdist.is_main())
        self._build()
        self.metrics_log: List[Dict[str, Any]] = []
        self._loss_sum, self._loss_n = torch.zeros((), device=self.device), 0
        self._skipped: Optional[int] = None  # unreadable examples skipped this epoch (tasks that skip)
        self.writer = None
        self._progress = None
        if self.rank == 0:
            (self.output_dir / "recipe.json").write_text(json.dumps(self.recipe.model_dump(), indent=2))
        start_epoch, skip_batches = self._maybe_resume()
        if self.rank == 0 and self.options.tensorboard:
            self.writer = self._tensorboard_writer()
        total = self.controller.total_steps
        epochs = -(-total // self.steps_per_epoch)
        progress = None
        if self.rank == 0 and self.options.progress:
            from tqdm.auto import tqdm

            progress = tqdm(total=total, initial=self.controller.step_count, desc=self.recipe.name,
                            dynamic_ncols=True, leave=False)
            self._progress = progress
        stop = False
        for epoch in range(start_epoch, epochs):
            self.clock.start()
            stop, done = self._train_epoch(epoch, skip_batches, progress)
            loss_sum, loss_n = self._loss_sum, self._loss_n
            self.clock.stop()
            skip_batches = 0
            all_batches = done == self.steps_per_epoch * self.gas
            # an epoch is over unless max_steps cut it short (the last one may end with the recipe)
            if (not stop or all_batches) and ((epoch + 1) % self.recipe.training.eval_every == 0 or epoch + 1 == epochs):
                self._end_of_epoch(epoch, loss_sum, loss_n)
            if stop:  # a checkpoint to resume from, at the exact data position
                self._save(*((epoch + 1, 0) if all_batches else (epoch, done)))
                break
            if self.options.save_every or epoch + 1 == epochs:
                self._save(epoch + 1, 0)
        if progress is not None:
            progress.close()
            self._progress = None
        if self.writer is not None:
            self.writer.close()
        final = self.metrics_log[-1] if self.metrics_log else {}
        result = {
            "recipe": self.recipe.name, "steps": self.controller.step_count, "stopped_early": stop,
            "metric": self.task.primary_metric, "score": final.get(f"val_{self.task.primary_metric}"),
            "sparsity": self.registry.weight_sparsity(), "revived": self.registry.revived(),
            "wall_time_s": time.time() - start_time, "world_size": self.world,
            # training loop only (no evaluation, checkpoints or set-up), all ranks together
            **self.clock.rates(self.recipe.training.batch_size),
        }
        if self.recipe.pruning.nm is not None:
            from .nm import registry_is_nm

            result["nm_exact"] = registry_is_nm(self.registry, self.recipe.pruning.nm)
            result["nm_dense_layers"] = self.nm_dense_layers
        if self.rank == 0:
            if not stop and self.task.export(self.engine.module, str(self.output_dir / "final_model")):
                result["exported_to"] = str(self.output_dir / "final_model")
            (self.output_dir / "result.json").write_text(json.dumps(result, indent=2))
        return result

    def _train_epoch(self, epoch: int, skip_batches: int, progress) -> Tuple[bool, int]:
        """Micro-batches of one epoch from ``skip_batches`` on (after a resume).

        Returns (stop requested by max_steps, micro-batches of the epoch done); the
        epoch's loss sum and count are in ``self._loss_sum``/``_loss_n`` (checkpointed).
        """
        self.train_sampler.set_epoch(epoch)
        micro_per_epoch = self.steps_per_epoch * self.gas
        done = skip_batches
        if not skip_batches:
            self._loss_sum, self._loss_n, self._skipped = torch.zeros((), device=self.device), 0, None
        for micro_idx, batch in self._epoch_batches(skip_batches):
            if micro_idx >= micro_per_epoch or self.controller.finished:
                break
            skipped = self.task.skipped_in_batch(batch)
            if skipped is not None:
                self._skipped = (self._skipped or 0) + int(skipped)
            self.controller.begin_step()
            loss = self._loss(batch)
            self.engine.backward(loss)
            self.engine.step()
            self._loss_sum += loss.detach().float()
            self._loss_n += 1
            done = micro_idx + 1
            if done % self.gas:
                continue
            self.clock.step_done()
            for callback in self.callbacks:
                callback.on_step_end(self)
            step = self.controller.step_count
            if progress is not None:
                progress.update(1)
                if step % 10 == 0:  # .item() waits for the device: not every step
                    progress.set_postfix(loss=f"{loss.item():.3f}", lr=f"{self.controller.get_last_lr()[0]:.3g}")
            if self.options.save_every and step % self.options.save_every == 0 and done < micro_per_epoch:
                self._save(epoch, done)
            if self.options.max_steps is not None and step >= self.options.max_steps:
                return True, done
        return False, done

    def _epoch_batches(self, skip_batches: int):
        """(micro-batch index, batch) of this epoch, starting after ``skip_batches`` (a resumed epoch).

        A resumed epoch starts its sampler after the batches already trained instead of
        loading and dropping them: they are not decoded again, and their random
        augmentations do not consume random numbers that the uninterrupted run drew for
        later batches (with loader workers, augmentations still differ after a resume).
        """
        if not skip_batches:
            return enumerate(self.train_loader)
        base = self.train_loader
        indices = list(self.train_sampler)[skip_batches * base.batch_size:]
        loader = DataLoader(base.dataset, batch_size=base.batch_size, sampler=indices, drop_last=True,
                            collate_fn=base.collate_fn, num_workers=base.num_workers, pin_memory=base.pin_memory)
        rng = torch.get_rng_state()  # the uninterrupted run drew the loader's base seed at the epoch start
        iterator = iter(loader)
        torch.set_rng_state(rng)
        return enumerate(iterator, start=skip_batches)

    def _end_of_epoch(self, epoch: int, loss_sum: torch.Tensor, loss_n: int) -> None:
        metrics = self.evaluate()
        train_loss = float(loss_sum) / max(loss_n, 1)
        # mask updates made before the steps of this epoch: t in [epoch*spe, (epoch+1)*spe)
        flips = [h["mask_change_rate"] for h in self.controller.history
                 if epoch * self.steps_per_epoch <= h["step"] < (epoch + 1) * self.steps_per_epoch]
        row = {"epoch": epoch + 1, "step": self.controller.step_count, "train_loss": train_loss,
               **{f"val_{k}": v for k, v in metrics.items()},
               "sparsity": self.registry.weight_sparsity(), "mask_sparsity": self.registry.mask_sparsity(),
               "compressed": self.controller.last_step_compressed, "lr": self.controller.get_last_lr()[0],
               "mask_change_rate": (sum(flips) / len(flips)) if flips else None,
               "layer_sparsity": self.registry.layer_sparsity()}
        counts = [c for c in dstdist.all_gather_objects(self._skipped) if c is not None]
        if counts:  # bad_images: skip — unreadable training images skipped this epoch, all ranks
            row["skipped_images"] = sum(counts)
        self._record(row)
        self._log(f"epoch {epoch + 1}: train_loss={train_loss:.4f} val_{self.task.primary_metric}="
                  f"{metrics[self.task.primary_metric]:.4f} sparsity={row['sparsity']:.4f}")
