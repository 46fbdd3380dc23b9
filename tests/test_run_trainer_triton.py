"""The default model trained through SparseTrainer: Triton kernels (interpreted) == PyTorch reference."""
import pytest
import torch
from helpers import train_default_model_per_backend


@pytest.mark.parametrize("optimizer", [{"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
                                       {"name": "adamw", "lr": 1e-3, "weight_decay": 0.01}])
def test_default_model_triton_backend_matches_torch(tmp_path, optimizer):
    states = train_default_model_per_backend(tmp_path, optimizer, ("torch", "triton"))
    for key, expected in states["torch"].items():
        got = states["triton"][key]
        if key.startswith("m/"):
            assert torch.equal(expected, got), key
        else:
            # SGD is bitwise; AdamW may differ by an ulp where torch's CPU sqrt is not correctly rounded
            torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7, msg=key)
