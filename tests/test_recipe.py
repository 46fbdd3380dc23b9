"""Recipe validation: every bad input gives one message naming the field and the fix."""
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dstrain import ConfigError, load_recipe, parse_recipe
from dstrain.recipe import check_schedule_positions
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


# --- numbers: finite, and within what a run can reach ---------------------------------------

INF, NAN = float("inf"), float("nan")
OBERT = {"criterion": "obert", "obert": {"num_grads": 8}}
ACDC_SCHEDULE = {"kind": "acdc", "sparsity": 0.9, "warmup": 1, "compressed": 1, "decompressed": 1, "final": 2}


def _variant(path, value, base=None):
    data = yaml.safe_load(yaml.safe_dump(base or BASE))
    node = data
    keys = path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    return data


def _obert(path, value):
    data = _variant("pruning", {**BASE["pruning"], **OBERT})
    return _variant(path, value, data)


@pytest.mark.parametrize("data, field, shown", [
    (_variant("training.epochs", INF), "training.epochs", "inf"),
    (_variant("training.epochs", -INF), "training.epochs", "-inf"),
    (_variant("pruning.schedule.frequency", INF), "pruning.schedule.frequency", "inf"),
    (_variant("pruning.schedule", {**ACDC_SCHEDULE, "compressed": INF}), "pruning.schedule.compressed", "inf"),
    (_variant("optimizer", {"name": "adamw", "lr": 1e-3, "eps": INF}), "optimizer.eps", "inf"),
    (_variant("optimizer.betas", [0.9, NAN]), "optimizer.betas.1", "nan"),
    (_variant("distillation", {"teacher": "t", "temperature": INF}), "distillation.temperature", "inf"),
    (_obert("pruning.obert.damping", INF), "pruning.obert.damping", "inf"),
    (_variant("lr_schedule.min_lr", NAN), "lr_schedule.min_lr", "nan"),
    (_variant("optimizer.lr", INF), "optimizer.lr", "inf"),
    (_variant("task.label_smoothing", NAN), "task.label_smoothing", "nan"),
])
def test_non_finite_numbers_are_refused_by_name(data, field, shown):
    with pytest.raises(ConfigError) as info:
        parse_recipe(data, "r.yaml")
    assert str(info.value).startswith(f"r.yaml: {field}: {shown} is not a finite number — write a finite number")


@pytest.mark.parametrize("data, field, words", [
    (_variant("training.epochs", 1e18), "training.epochs", "less than or equal to 100000"),
    (_variant("training.batch_size", 2**24 + 1), "training.batch_size", "less than or equal to 16777216"),
    (_variant("training.eval_every", 10**18), "training.eval_every", "less than or equal to 100000"),
    (_variant("training.grad_clip", 1e300), "training.grad_clip", "less than or equal to 1000000"),
    (_variant("optimizer", {"name": "adamw", "lr": 1e-3, "eps": 1.0}), "optimizer.eps", "less than 1"),
    (_variant("distillation", {"teacher": "t", "temperature": 101}), "distillation.temperature",
     "less than or equal to 100"),
    (_obert("pruning.obert.damping", 1e7), "pruning.obert.damping", "less than or equal to 1000000"),
    (_obert("pruning.obert.num_grads", 10**6 + 1), "pruning.obert.num_grads", "less than or equal to 1000000"),
    (_obert("pruning.obert.block_size", 4097), "pruning.obert.block_size", "less than or equal to 4096"),
    (_variant("task.image_size", 8193), "task.image_size", "less than or equal to 8192"),
    (_variant("task.num_classes", 10**18), "task.num_classes", "less than or equal to 1000000"),
    (_variant("task", {"name": "synthetic", "synthetic_size": 10**9 + 1}), "task.synthetic_size", "less than or equal"),
    (_variant("task.arch_options", {"depth": 6 * 10**17 + 2}), "task.arch_options.depth", "less than or equal to 1202"),
    (_variant("lr_schedule.milestones", [1] * 1001), "lr_schedule.milestones", "at most 1000 items"),
    (_variant("pruning.schedule.frequency", 11), "pruning.schedule.frequency",
     "11 epochs is longer than training.epochs (10)"),
    (_variant("pruning.schedule", {**ACDC_SCHEDULE, "decompressed": 1e18}), "pruning.schedule.decompressed",
     "1e+18 epochs is longer than training.epochs"),
])
def test_absurd_numbers_are_refused_by_name(data, field, words):
    with pytest.raises(ConfigError) as info:
        parse_recipe(data, "r.yaml")
    assert str(info.value).startswith(f"r.yaml: {field}: ") and words in str(info.value), str(info.value)


def test_glue_max_length_is_bounded():
    from dstrain.tasks import check_task_config

    task = {"name": "glue", "glue_task": "mrpc", "model_dir": "m", "data_dir": "d"}
    check_task_config({**task, "max_length": 65536})
    for key, value, words in [("max_length", 65537, "less than or equal to 65536"),
                              ("max_length", INF, "valid integer"), ("pad_to_multiple_of", 10**18, "less than")]:
        with pytest.raises(ConfigError, match=rf"^task\.{key}: .*{words}"):
            check_task_config({**task, key: value})


def test_a_huge_lr_still_loads():
    """Only finite and > 0: stopping a diverging run is the trainer's divergence guard's job."""
    assert parse_recipe(_variant("optimizer.lr", 1e6)).optimizer.lr == 1e6


def test_a_huge_run_with_lr_rewinding_is_refused_at_once():
    """epochs: 1e18 is refused at load; the longest allowed run counts its restarts in closed form."""
    with pytest.raises(ConfigError, match=r"training\.epochs: .*less than or equal to 100000"):
        parse_recipe(_with("lr_schedule", {"rewind_at_pruning": True}) | {"training": {"epochs": 1e18,
                                                                                       "batch_size": 8}})
    data = _with("lr_schedule", {"rewind_at_pruning": True})
    data["training"]["epochs"] = 100_000
    data["pruning"] = {"unit": "step", "schedule": {"kind": "gmp", "final_sparsity": 0.9, "start": 0,
                                                    "end": 10**9, "frequency": 1}}
    recipe = parse_recipe(data)
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"lr_schedule\.rewind_at_pruning: would restart the LR at 1,000,000,001 "
                                          r"mask updates .* more than 1,000,000"):
        check_schedule_positions(recipe, "r", steps_per_epoch=10**5)
    with pytest.raises(ConfigError, match=r"lr_schedule\.rewind_at_pruning"):
        build_lr_schedule(recipe, 10**5, build_sparsity_schedule(recipe, 10**5))
    assert time.perf_counter() - start < 1


# --- the name is one folder name --------------------------------------------------------------


@pytest.mark.parametrize("name", ["../../escaped_run", "/abs", "..", ".", "", "a/b", "x\x00y", "run\n", "-rf",
                                  ".hidden", "x" * 129, "a b"])
def test_names_that_are_not_one_folder_are_refused(name):
    with pytest.raises(ConfigError) as info:
        parse_recipe(_with("name", name), "r.yaml")
    message = str(info.value)
    assert message.startswith("r.yaml: name: ") and "is not one folder name" in message and "\n" not in message


@pytest.mark.parametrize("name", ["digits_gmp90", "bert_base_mnli_dense_3ep", "v1.2-run", "0", "x" * 128])
def test_folder_names_load(name):
    assert parse_recipe(_with("name", name)).name == name
