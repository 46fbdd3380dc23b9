"""Two processes over gloo through DeepSpeed: ranks agree, and agree with one process."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import TINY, run, tiny_recipe, weights_and_masks

HERE = Path(__file__).resolve().parent

# No BatchNorm: batch statistics would differ between one process of 128 and two of 64.
NO_BN = {"task.arch_options": {"depth": 8, "width": 8, "norm": "none"}, "optimizer.lr": 0.05}


def launch(spec: dict, tmp_path: Path, nproc: int = 2) -> list:
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_port", str(29500 + os.getpid() % 1000), str(HERE / "dist_worker.py"), str(spec_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [torch.load(Path(spec["out"]) / f"rank{r}.pt", weights_only=False) for r in range(nproc)]


def _recipe_dict(**overrides):
    recipe = tiny_recipe(**overrides)
    return recipe.model_dump()


def test_two_ranks_end_identical_and_match_one_process(tmp_path):
    recipe = _recipe_dict(**NO_BN)
    ranks = launch({"recipe": recipe, "out": str(tmp_path / "dist")}, tmp_path)
    r0, r1 = ranks[0]["state"], ranks[1]["state"]
    for key in r0:
        assert torch.equal(r0[key], r1[key]), f"ranks differ in {key}"
    assert int(r0["revived"]) == 0
    assert abs(ranks[0]["result"]["sparsity"] - 0.8) < 1e-4

    single, _ = run(tiny_recipe(**NO_BN), tmp_path / "single")
    ref = weights_and_masks(single)
    for key, value in ref.items():
        if key.startswith("m/"):
            assert torch.equal(value, r0[key]), key
        else:
            torch.testing.assert_close(r0[key], value, rtol=1e-4, atol=1e-5, msg=key)
