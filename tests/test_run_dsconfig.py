"""Every shipped DeepSpeed config resolves against every shipped recipe's batch size."""
import json
from pathlib import Path

import pytest
import torch

from dstrain import ConfigError, load_recipe
from dstrain.run.dsconfig import resolve_ds_config

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted((REPO / "launch").glob("**/*.json"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_resolves(path):
    recipe = load_recipe(REPO / "recipes" / "digits_gmp90.yaml", {"training.batch_size": 1024})
    cfg = resolve_ds_config(json.loads(path.read_text()), recipe, world=8)
    assert cfg["train_batch_size"] == cfg["train_micro_batch_size_per_gpu"] * cfg["gradient_accumulation_steps"] * 8


def test_inconsistent_batch_sizes_name_the_field():
    recipe = load_recipe(REPO / "recipes" / "digits_gmp90.yaml")
    with pytest.raises(ConfigError, match="ds_config.train_batch_size: 32 differs from the recipe"):
        resolve_ds_config({"train_batch_size": 32}, recipe, world=1)
    with pytest.raises(ConfigError, match="ds_config.train_micro_batch_size_per_gpu"):
        resolve_ds_config({"train_micro_batch_size_per_gpu": 5}, recipe, world=3)
    with pytest.raises(ConfigError, match="ds_config.optimizer"):
        resolve_ds_config({"optimizer": {"type": "Adam"}}, recipe, world=1)


def test_gradient_clipping_comes_from_the_recipe():
    """DeepSpeed clips at 1.0 when the key is absent: the resolved config always states the recipe's value."""
    recipe = load_recipe(REPO / "recipes" / "digits_gmp90.yaml")
    assert recipe.training.grad_clip is None
    big = load_recipe(REPO / "recipes" / "digits_gmp90.yaml", {"training.batch_size": 1024})
    for path in CONFIGS:  # every shipped config trains unclipped under a recipe without grad_clip
        assert resolve_ds_config(json.loads(path.read_text()), big, world=8)["gradient_clipping"] == 0.0
    clipped = load_recipe(REPO / "recipes" / "digits_gmp90.yaml", {"training.grad_clip": 0.5})
    assert resolve_ds_config({}, clipped, world=1)["gradient_clipping"] == 0.5
    assert resolve_ds_config({"gradient_clipping": 0.5}, clipped, world=1)["gradient_clipping"] == 0.5
    with pytest.raises(ConfigError, match=r"ds_config.gradient_clipping: 1.0 differs from the recipe's "
                                          r"training.grad_clip \(none\)"):
        resolve_ds_config({"gradient_clipping": 1.0}, recipe, world=1)
    with pytest.raises(ConfigError, match=r"training.grad_clip \(0.5\)"):
        resolve_ds_config({"gradient_clipping": 0.0}, clipped, world=1)


def test_cpu_gloo_and_ds_config_train_alike(tmp_path):
    """cpu_gloo.json omits gradient_clipping, ds_config.json sets 0.0: both train unclipped, to the same weights.

    Before the recipe owned clipping, cpu_gloo.json clipped at DeepSpeed's default 1.0 (epoch-1 loss
    1.3997 vs 1.0458 on digits).
    """
    from helpers import run, tiny_recipe, weights_and_masks

    states = []
    for name in ("configs/cpu_gloo.json", "ds_config.json"):
        trainer, _ = run(tiny_recipe(), tmp_path / name.replace("/", "_"), max_steps=5,
                         ds_config=json.loads((REPO / "launch" / name).read_text()))
        states.append(weights_and_masks(trainer))
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
