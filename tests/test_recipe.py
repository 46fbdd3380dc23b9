"""Recipe validation: every bad input gives one message naming the field and the fix."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dstrain import ConfigError, load_recipe, parse_recipe
from dstrain.schedules import ACDC, Gradual
from dstrain.schedules.factory import build_lr_schedule, build_sparsity_schedule

REPO = Path(__file__).resolve().parent.parent

BASE = {
    "name": "t",
    "task": {"name": "digits"},
    "training": {"epochs": 10, "batch_size": 32},
    "optimizer": {"name": "sgd", "lr": 0.1},
    "pruning": {"schedule": {"kind": "gmp", "final_sparsity": 0.9, "start": 1, "end": 8, "frequency": 1}},
}


def _with(path, value):
    data = yaml.safe_load(yaml.safe_dump(BASE))
    node = data
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = value
    return data


@pytest.mark.parametrize("path,value,field,words", [
    ("pruning.schedule.final_sparsity", 1.2, "pruning.schedule.final_sparsity", "must be in [0, 1)"),
    ("pruning.schedule.end", 0.5, "pruning.schedule", "end (0.5) must be after start (1.0)"),
    ("pruning.schedule.kind", "random", "pruning.schedule", "kind to one of"),
    ("optimizer.lr", "fast", "optimizer.lr", "valid number"),
    ("optimizer.momentun", 0.9, "optimizer.momentun", "unknown key"),
    ("training.epochs", 5, "pruning.schedule.end", "epoch 8 is after training.epochs (5)"),
    ("lr_schedule", {"warmup": 12}, "lr_schedule.warmup", "not shorter than training.epochs"),
    ("pruning.scope", "per-channel", "pruning.scope", "'global' or 'layerwise'"),
])
def test_bad_recipes_name_the_field(path, value, field, words):
    with pytest.raises(ConfigError) as info:
        parse_recipe(_with(path, value), "r.yaml")
    message = str(info.value)
    assert message.startswith(f"r.yaml: {field}:"), message
    assert words in message, message


def test_missing_required_field():
    data = _with("training", {"epochs": 3})
    with pytest.raises(ConfigError, match=r"training\.batch_size: required field is missing — add it"):
        parse_recipe(data, "r.yaml")


def test_epoch_units_convert_to_steps():
    recipe = parse_recipe(BASE)
    sched = build_sparsity_schedule(recipe, steps_per_epoch=10)
    assert sched == Gradual(0.0, 0.9, 10, 80, 10)
    acdc = build_sparsity_schedule(parse_recipe(_with("pruning.schedule", {"kind": "acdc", "sparsity": 0.9, "warmup": 2,
                                                                           "compressed": 1, "decompressed": 1,
                                                                           "final": 3})), 5)
    assert acdc == ACDC(0.9, 10, 5, 5, 15, 50)


def test_lr_rewind_restarts_at_mask_updates():
    data = _with("lr_schedule", {"shape": "linear", "rewind_at_pruning": True})
    recipe = parse_recipe(data)
    lr = build_lr_schedule(recipe, 10, build_sparsity_schedule(recipe, 10))
    assert lr.restarts == (10, 20, 30, 40, 50, 60, 70, 80)
    assert lr(20) == pytest.approx(0.1)


def test_cyclic_lr_reaches_min_at_every_mask_update_and_needs_rewinding():
    data = _with("lr_schedule", {"shape": "linear", "min_lr": 0.01, "rewind_at_pruning": True, "cyclic": True})
    recipe = parse_recipe(data)
    lr = build_lr_schedule(recipe, 10, build_sparsity_schedule(recipe, 10))
    assert lr.cyclic and lr.restarts == (10, 20, 30, 40, 50, 60, 70, 80)
    assert [lr(t) for t in (0, 9, 10, 19, 20)] == pytest.approx([0.1, 0.019, 0.1, 0.019, 0.1])
    with pytest.raises(ConfigError, match=r"lr_schedule: .*cyclic: true needs rewind_at_pruning: true"):
        parse_recipe(_with("lr_schedule", {"shape": "linear", "cyclic": True}))


def test_every_shipped_recipe_loads():
    recipes = sorted((REPO / "recipes").glob("**/*.yaml"))
    assert recipes
    for path in recipes:
        load_recipe(path)


def test_overrides_and_missing_file(tmp_path):
    r = load_recipe(REPO / "recipes" / "digits_gmp90.yaml", {"training.epochs": 3, "pruning.schedule.start": 0, "pruning.schedule.end": 2})
    assert r.training.epochs == 3
    with pytest.raises(ConfigError, match="--recipe: .* does not exist"):
        load_recipe(tmp_path / "nope.yaml")


def test_cli_reports_bad_recipe_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_with("pruning.schedule.final_sparsity", 1.5)))
    proc = subprocess.run([sys.executable, str(REPO / "launch" / "train.py"), "--recipe", str(bad)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "pruning.schedule.final_sparsity: 1.5 must be in [0, 1)" in proc.stderr and "Traceback" not in proc.stderr


def test_dump_recipe_round_trips(tmp_path):
    from dstrain.recipe import write_recipe

    recipe = load_recipe(REPO / "recipes" / "digits_gmp90.yaml")
    path = tmp_path / "r.yaml"
    assert write_recipe(path, recipe.model_dump(), "# a comment\n") == recipe
    assert path.read_text().startswith("# a comment\nname: digits_gmp90\n")
