"""Small recipes and run helpers shared by the training tests."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import torch

from dstrain import SparseTrainer, TrainerCallback, TrainerOptions, parse_recipe
from dstrain.sparsity.nm import is_nm, nm_eligible

HERE = Path(__file__).resolve().parent

TINY = {
    "name": "tiny",
    "task": {"name": "digits", "arch": "small_resnet", "arch_options": {"depth": 8, "width": 8}},
    "training": {"epochs": 3, "batch_size": 128, "seed": 0},
    "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
    "lr_schedule": {"shape": "cosine", "unit": "epoch", "warmup": 0.5},
    "pruning": {"unit": "step", "schedule": {"kind": "gmp", "initial_sparsity": 0.1, "final_sparsity": 0.8,
                                             "start": 2, "end": 20, "frequency": 3}},
}


def tiny_recipe(**overrides: Any):
    data = copy.deepcopy(TINY)
    for key, value in overrides.items():
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            node = node[p]
        node[parts[-1]] = value
    return parse_recipe(data)


def run(recipe, out: Path, callbacks=(), **options):
    trainer = SparseTrainer(recipe, TrainerOptions(output_dir=out, progress=False, tensorboard=False, **options),
                            callbacks=callbacks)
    result = trainer.train()
    return trainer, result


def weights_and_masks(trainer) -> Dict[str, torch.Tensor]:
    """The model's whole weights and masks (under ZeRO-3 gathered from every rank: a test-only gather)."""
    if not getattr(trainer.registry, "partitioned", False):
        state = {f"w/{k}": v.detach().clone().float() for k, v in trainer.engine.module.state_dict().items()}
        state.update({f"m/{k}": v.clone() for k, v in trainer.registry.state_dict().items()})
        return state
    import deepspeed
    import torch.distributed as dist

    module = trainer.engine.module
    with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
        state = {f"w/{k}": v.detach().clone().float() for k, v in module.state_dict().items()}
    reg = trainer.registry
    for name, mask in reg.masks.items():
        parts = [None] * reg.world
        dist.all_gather_object(parts, mask.cpu())
        state[f"m/{name}"] = torch.cat(parts).reshape(reg.full_shapes[name])
    return state


DIST_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def subprocess_env(**extra: str) -> Dict[str, str]:
    """This process's environment minus the process-group variables an in-process run set."""
    import os

    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", **extra)
    return env


def train_default_model_per_backend(tmp_path: Path, optimizer: Dict[str, Any], backends) -> Dict[str, Dict[str, torch.Tensor]]:
    """The default digits recipe for 3 optimizer steps with GMP mask updates at steps 0-2, once per
    optimizer backend; returns each run's weights and masks (nothing may be revived in any)."""
    from dstrain import load_recipe

    recipe_path = Path(__file__).resolve().parent.parent / "recipes" / "digits_gmp90.yaml"
    overrides = {"pruning.unit": "step", "training.epochs": 1, "lr_schedule.warmup": 0,
                 "pruning.schedule": {"kind": "gmp", "initial_sparsity": 0.5, "final_sparsity": 0.9,
                                      "start": 0, "end": 2, "frequency": 1}}
    states = {}
    for backend in backends:
        recipe = load_recipe(recipe_path, {**overrides, "optimizer": dict(optimizer, backend=backend)})
        trainer, result = run(recipe, tmp_path / backend, max_steps=3)
        assert result["revived"] == 0
        states[backend] = weights_and_masks(trainer)
    return states


class InvariantWatch(TrainerCallback):
    """Checks after every optimizer step that no pruned weight is non-zero."""

    def __init__(self):
        self.phases, self.revived, self.sparsity = [], [], []

    def on_step_end(self, trainer):
        compressed = trainer.controller.sparsity.is_compressed(trainer.controller.step_count - 1)
        self.phases.append(compressed)
        if compressed:
            self.revived.append(trainer.registry.revived())
        self.sparsity.append(trainer.registry.mask_sparsity())


class NMChecker(TrainerCallback):
    """After every optimizer step: every N:M-eligible prunable weight has exactly N nonzeros per group
    in a compressed step, and the fp32 masters (ZeRO partitions) hold zeros wherever the mask prunes."""

    def __init__(self, pattern):
        self.pattern, self.checked, self.dense_steps = pattern, 0, 0

    def on_step_end(self, trainer) -> None:
        if not trainer.controller.last_step_compressed:
            self.dense_steps += 1
            return
        for name, p in trainer.registry.params.items():
            if nm_eligible(p, self.pattern):
                assert is_nm(p.detach(), self.pattern), f"{name} is not exactly {self.pattern} at step " \
                                                       f"{trainer.controller.step_count}"
            else:
                assert bool((p != 0).all()), f"{name} should have stayed dense"
        for master, mask in trainer.partition_masks.masters_and_masks():
            assert int((master[~mask] != 0).sum()) == 0
        self.checked += 1


def launch(spec: dict, tmp_path: Path, nproc: int = 2, worker: Path = HERE / "dist_worker.py") -> list:
    """Run ``worker`` under torch.distributed.run; returns each rank's saved state."""
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    env = subprocess_env()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_port", str(20000 + (os.getpid() * 7 + len(str(tmp_path))) % 20000), str(worker), str(spec_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [torch.load(Path(spec["out"]) / f"rank{r}.pt", weights_only=False) for r in range(nproc)]
