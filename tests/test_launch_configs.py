"""Every shipped DeepSpeed config resolves against every shipped recipe's batch size."""
import json
from pathlib import Path

import pytest

from dstrain import ConfigError, load_recipe
from dstrain.trainer import resolve_ds_config

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
