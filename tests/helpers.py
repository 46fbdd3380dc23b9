"""Small recipes and run helpers shared by the training tests."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict

import torch

from dstrain import SparseTrainer, TrainerOptions, parse_recipe

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
    state = {f"w/{k}": v.detach().clone().float() for k, v in trainer.engine.module.state_dict().items()}
    state.update({f"m/{k}": v.clone() for k, v in trainer.registry.state_dict().items()})
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
