"""Every bad input through the training command line is one line naming the field, the bad value and the fix (no traceback)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import TINY, run, subprocess_env, tiny_recipe

from dstrain import ConfigError, load_recipe
from dstrain.recipe import check_schedule_positions
from dstrain.run.dsconfig import load_ds_config, validate_ds_config
from dstrain.run.preflight import check_run_options
from dstrain.run.rundir import RunDir

REPO = Path(__file__).resolve().parent.parent


def _recipe_file(tmp_path, data=TINY):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _one_line(err: ConfigError) -> str:
    text = str(err)
    assert "\n" not in text and "Traceback" not in text
    return text


@pytest.mark.parametrize("key,value,words", [
    ("training.seed", -1, r"training\.seed: .*greater than or equal to 0 .* got -1"),
    ("training.seed", 2**32, r"training\.seed: .*less than 4294967296"),
    ("training.epochs", True, r"training\.epochs: .*valid number .* got True"),
    ("training.batch_size", 12.5, r"training\.batch_size: .*valid integer"),
    ("task.arch_options", {"depth": 8, "width": -1}, r"task\.arch_options\.width: -1: .*greater than 0"),
    ("task.arch_options", {"depth": 8, "width": "wide"}, r"task\.arch_options\.width: 'wide': .*valid integer"),
    ("task.arch_options", {"depth": 9}, r"task\.arch_options\.depth: 9: .*not 6n\+2"),
    ("task.arch_options", {"colour": 1}, r"task\.arch_options\.colour: is not an option of small_resnet — use only "),
    ("task.num_classes", -3, r"task\.num_classes: .*greater than or equal to 2 .* got -3"),
    ("task.arch", "vgg", r"task\.arch: unknown architecture 'vgg'"),
    ("task.name", "mnist", r"task\.name: unknown task 'mnist' — use one of digits"),
    ("optimizer.momentum", 1.5, r"optimizer\.momentum: .*less than 1 .* got 1\.5"),
    ("optimizer.betas", [0.9, 1.0], r"optimizer\.betas\.1: 1\.0 must be in \[0, 1\)"),
    ("lr_schedule.min_lr", 0.5, r"lr_schedule\.min_lr: 0\.5 is above optimizer\.lr \(0\.1\).* set min_lr <= lr"),
    ("lr_schedule.milestones", [1, 5], r"lr_schedule\.milestones\.1: epoch 5 is after training\.epochs \(3\)"),
    ("pruning.unit", "epoch", r"pruning\.schedule\.start: epoch 2 is after training\.epochs \(3\)|"
                              r"pruning\.schedule\.end: epoch 20 is after training\.epochs"),
    ("pruning.schedule", {"kind": "oneshot", "sparsity": 0.9, "at": 3}, r"pruning\.schedule\.at: epoch 3 is at or after training\.epochs \(3\)"),
])
def test_bad_recipe_fields_are_one_line(tmp_path, key, value, words):
    data = yaml.safe_load(yaml.safe_dump(TINY))
    if key == "pruning.schedule" and value["kind"] == "oneshot":
        data["pruning"]["unit"] = "epoch"
    with pytest.raises(ConfigError, match=words) as err:
        load_recipe(_recipe_file(tmp_path, data), {key: value})
    _one_line(err.value)


def test_missing_task_is_refused_not_digits(tmp_path):
    data = {k: v for k, v in TINY.items() if k != "task"}
    with pytest.raises(ConfigError, match=r"r\.yaml: task: required field is missing — add it \(e\.g\. task: "
                                          r"\{name: digits\}; there is no default task\)"):
        load_recipe(_recipe_file(tmp_path, data))


@pytest.mark.parametrize("schedule,field", [
    ({"kind": "oneshot", "sparsity": 0.9, "at": 100000}, "pruning.schedule.at: step 100000 is after the end of "
                                                          "training (33 steps: training.epochs 3 x 11 steps per epoch)"),
    ({"kind": "acdc", "sparsity": 0.9, "warmup": 2, "compressed": 3, "decompressed": 3, "final": 100000},
     "pruning.schedule: warmup + last_decompressed + final (100002 steps) exceed the end of training (33 steps"),
    ({"kind": "gmp", "final_sparsity": 0.9, "start": 40, "end": 50, "frequency": 1}, "pruning.schedule.start: step 40"),
])
def test_step_unit_positions_after_the_end_are_refused(schedule, field):
    recipe = tiny_recipe(**{"pruning.schedule": schedule})  # loads: step units need the epoch length
    with pytest.raises(ConfigError) as err:
        check_schedule_positions(recipe, "recipe tiny", steps_per_epoch=11)
    assert field in _one_line(err.value)
    check_schedule_positions(tiny_recipe(), "recipe tiny", steps_per_epoch=11)  # the shipped shape passes


def test_step_positions_are_checked_by_the_trainer_before_training(tmp_path):
    recipe = tiny_recipe(**{"pruning.schedule": {"kind": "oneshot", "sparsity": 0.9, "at": 100000}})
    with pytest.raises(ConfigError, match=r"recipe tiny: pruning\.schedule\.at: step 100000 is after the end"):
        run(recipe, tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_unreadable_and_non_mapping_recipe_files(tmp_path):
    binary = tmp_path / "model.pt"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ConfigError, match=r"^--recipe: .*model\.pt is not a text file"):
        load_recipe(binary)
    empty, listed = tmp_path / "empty.yaml", tmp_path / "list.yaml"
    empty.write_text("")
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"empty\.yaml: is empty, not a recipe mapping"):
        load_recipe(empty, {"training.epochs": 1})
    with pytest.raises(ConfigError, match=r"list\.yaml: is a YAML list, not a recipe mapping"):
        load_recipe(listed, {"training.epochs": 1})
    broken = tmp_path / "broken.yaml"
    broken.write_text("training: {epochs: [1\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: is not valid YAML") as err:
        load_recipe(broken)
    _one_line(err.value)


def _parse_overrides(items):
    from dstrain.cli.train import parse_overrides

    return parse_overrides(items)


def test_bad_set_values_are_one_line():
    with pytest.raises(ConfigError, match=r"^--set training\.epochs: value '\[1' is not valid YAML .* — quote") as err:
        _parse_overrides(["training.epochs=[1"])
    _one_line(err.value)
    with pytest.raises(ConfigError, match=r"is not a dotted recipe key"):
        _parse_overrides(["training..epochs=1"])
    with pytest.raises(ConfigError, match=r"expected KEY=VALUE"):
        _parse_overrides(["training.epochs"])
    assert _parse_overrides(["training.epochs=5", "task.arch_options={depth: 8}"]) == {
        "training.epochs": 5, "task.arch_options": {"depth": 8}}


@pytest.mark.parametrize("cfg,words", [
    ([{"train_batch_size": 32}], r"^ds_config: must be a JSON object, got a list"),
    ({"train_batch_size": "abc"}, r"^ds_config\.train_batch_size: 'abc' is not valid — use \"auto\""),
    ({"train_micro_batch_size_per_gpu": 0, "gradient_accumulation_steps": "auto"},
     r"^ds_config\.train_micro_batch_size_per_gpu: 0 is not valid"),
    ({"gradient_accumulation_steps": 0}, r"^ds_config\.gradient_accumulation_steps: 0 is not valid"),
    ({"zero_optimization": 2}, r"^ds_config\.zero_optimization: 2 is not valid — use an object such as"),
    ({"zero_optimization": {"stage": "two"}}, r"^ds_config\.zero_optimization\.stage: 'two' is not valid"),
    ({"zero_optimization": {"stage": 5}}, r"^ds_config\.zero_optimization\.stage: 5 is not valid"),
    ({"bf16": {"enabled": "yes"}}, r"^ds_config\.bf16\.enabled: 'yes' is not valid — use true or false"),
    ({"train_batch_size": True}, r"^ds_config\.train_batch_size: True is not valid"),
])
def test_bad_ds_configs_are_one_line(cfg, words):
    with pytest.raises(ConfigError, match=words) as err:
        validate_ds_config(cfg)
    _one_line(err.value)


def test_shipped_ds_configs_validate_and_bad_files_are_named(tmp_path):
    for path in sorted((REPO / "launch").rglob("*.json")):
        load_ds_config(path)
    binary = tmp_path / "ds.json"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(ConfigError, match=r"^--deepspeed_config: .*ds\.json is not a text file"):
        load_ds_config(binary)
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps([1, 2]))
    with pytest.raises(ConfigError, match=r"^ds_config: must be a JSON object, got a list in .*list\.json"):
        load_ds_config(listed)


def test_ds_config_batch_arithmetic_is_refused_before_deepspeed(tmp_path):
    with pytest.raises(ConfigError, match=r"ds_config\.train_micro_batch_size_per_gpu: micro batch 256 x "):
        run(tiny_recipe(), tmp_path, ds_config={"train_micro_batch_size_per_gpu": 256})


@pytest.mark.parametrize("options,words", [
    (dict(num_workers=-1), r"^--num_workers: -1 is not an integer >= 0"),
    (dict(save_every=-5), r"^--save_every: -5 is not an integer >= 0"),
    (dict(max_steps=-1), r"^--max_steps: -1 is not an integer >= 0"),
])
def test_bad_run_flags_are_refused_before_anything_runs(tmp_path, options, words):
    with pytest.raises(ConfigError, match=words):
        run(tiny_recipe(), tmp_path / "out", **options)
    assert not (tmp_path / "out").exists()


def test_output_dir_that_is_a_file_or_read_only(tmp_path):
    afile = tmp_path / "runs"
    afile.write_text("not a folder")
    with pytest.raises(ConfigError, match=r"^--output_dir: .*runs is a file, not a folder"):
        RunDir(afile / "tiny").check_writable()
    readonly = Path("/proc/self/dstrain-run")  # a read-only file system, even for root
    with pytest.raises(ConfigError, match=r"^--output_dir: cannot write to /proc/self/dstrain-run"):
        RunDir(readonly).check_writable()
    check_run_options(0, None, 0, 2)


@pytest.mark.parametrize("args,words", [
    (["--set", "task.arch_options.width=-1"], "error: "),
    (["--num_workers", "-1"], "error: --num_workers: -1 is not an integer >= 0"),
    (["--deepspeed_config", "LIST"], "error: ds_config: must be a JSON object, got a list"),
])
def test_launch_script_prints_one_line_and_exit_2(tmp_path, args, words):
    """Through the real entry point: what reaches the user is one line, no traceback."""
    listed = tmp_path / "list.json"
    listed.write_text("[]")
    args = [str(listed) if a == "LIST" else a for a in args]
    cmd = [sys.executable, str(REPO / "launch" / "train.py"), "--recipe", str(_recipe_file(tmp_path)),
           "--output_dir", str(tmp_path / "runs"), "--no_progress", *args]
    proc = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(words), proc.stderr[-2000:]


def test_internal_errors_still_raise_with_a_traceback(tmp_path, monkeypatch):
    """Only ConfigError (user input) becomes one line; a bug in dstrain propagates as itself."""
    import dstrain

    def broken(self):
        raise RuntimeError("a bug, not a user mistake")

    monkeypatch.setattr(dstrain.SparseTrainer, "train", broken)
    sys.path.insert(0, str(REPO / "launch"))
    try:
        import train as launch_train
    finally:
        sys.path.pop(0)
    with pytest.raises(RuntimeError, match="a bug"):
        launch_train.main(["--recipe", str(_recipe_file(tmp_path)), "--output_dir", str(tmp_path / "runs")])


def test_set_values_are_read_in_the_recipe_dialect():
    assert _parse_overrides(["pruning.pattern=2:4", "task.channels_last=yes", "training.epochs=1e3"]) == {
        "pruning.pattern": "2:4", "task.channels_last": "yes", "training.epochs": 1000.0}
    for item, words in [("task.arch_options={depth: 8, depth: 14}",
                         r"^--set task\.arch_options\.depth: is given twice on line 1 \(YAML would silently keep"),
                        ("training.batch_size=0100", r"^--set training\.batch_size: 0100 has a leading zero \(YAML "
                                                     r"1\.1 reads it as the octal number 64\) — write 100"),
                        ("task=" + "[" * 1000, r"^--set task: nesting deeper than 64 levels"),
                        ("x=[" + "y" * 10_000, r"^--set x: value '\[yyy.*' is not valid YAML")]:
        with pytest.raises(ConfigError, match=words) as err:
            _parse_overrides([item])
        assert len(_one_line(err.value)) < 1000


@pytest.mark.parametrize("args, words", [
    (["--set", "name=../escaped_run"], "name: '../escaped_run' is not one folder name (the run is written to "
                                       "OUTPUT_DIR/<name>) — use letters"),
    (["--set", "training.epochs=.inf"], "training.epochs: inf is not a finite number — write a finite number"),
    (["--set", "optimizer.nesterov=yes"], "optimizer.nesterov: Input should be a valid boolean — got 'yes'; "
                                          "use true or false"),
    (["--set", "task.arch_options={depth: 8, depth: 14}"], "error: --set task.arch_options.depth: is given twice"),
    (["--recipe", "FIFO"], "is not a regular file (a device, FIFO or socket)"),
])
def test_launch_script_refuses_dialect_and_path_mistakes_in_one_line(tmp_path, args, words):
    """Through the real entry point, bad values, names and recipe paths: one line, exit 2, nothing written."""
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    recipe = ["--recipe", str(_recipe_file(tmp_path))] if "--recipe" not in args else []
    cmd = [sys.executable, str(REPO / "launch" / "train.py"), *recipe, "--output_dir", str(tmp_path / "runs"),
           "--no_progress", *[str(fifo) if a == "FIFO" else a for a in args]]
    proc = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and words in errors[0], proc.stderr[-2000:]
    assert not (tmp_path / "escaped_run").exists() and not (tmp_path / "runs").exists()
