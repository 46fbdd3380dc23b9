"""The default model trained through SparseTrainer: Triton kernels (interpreted) == PyTorch reference."""
import pytest
import torch

from dstrain import load_recipe
from helpers import run, weights_and_masks
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("optimizer", [{"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
                                       {"name": "adamw", "lr": 1e-3, "weight_decay": 0.01}])
def test_default_model_triton_backend_matches_torch(tmp_path, optimizer):
    overrides = {"pruning.unit": "step", "training.epochs": 1, "lr_schedule.warmup": 0,
                 "pruning.schedule": {"kind": "gmp", "initial_sparsity": 0.5, "final_sparsity": 0.9,
                                      "start": 0, "end": 2, "frequency": 1}}
    states = {}
    for backend in ("torch", "triton"):
        recipe = load_recipe(REPO / "recipes" / "digits_gmp90.yaml",
                             {**overrides, "optimizer": dict(optimizer, backend=backend)})
        trainer, result = run(recipe, tmp_path / backend, max_steps=3)
        assert result["revived"] == 0
        states[backend] = weights_and_masks(trainer)
    for key, expected in states["torch"].items():
        got = states["triton"][key]
        if key.startswith("m/"):
            assert torch.equal(expected, got), key
        else:
            # SGD is bitwise; AdamW may differ by an ulp where torch's CPU sqrt is not correctly rounded
            torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7, msg=key)
