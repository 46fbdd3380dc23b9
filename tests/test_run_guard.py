"""dstrain.run.guard: a diverged run stops within a few steps with one line, and leaves only finite checkpoints."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import TINY, run, subprocess_env, tiny_recipe

from dstrain.run import checkpoints as ckpt
from dstrain.run.guard import TrainingDiverged

REPO = Path(__file__).resolve().parent.parent
DIVERGING = {"optimizer.lr": 1e6, "training.guard": {"check_every": 2}}


def _all_checkpoints_finite(run_dir: Path) -> int:
    found = ckpt.complete_checkpoints(run_dir / "checkpoints")
    for _, folder in found:
        state = torch.load(folder / "mp_rank_00_model_states.pt", weights_only=False)
        assert all(torch.isfinite(v).all() for v in state["module"].values() if v.is_floating_point()), folder
    return len(found)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_lr_1e6_stops_within_a_few_steps_and_leaves_only_finite_checkpoints(tmp_path, precision):
    ds_config = {"bf16": {"enabled": True}} if precision == "bf16" else {}
    with pytest.raises(TrainingDiverged) as err:
        run(tiny_recipe(**DIVERGING), tmp_path, save_every=1, ds_config=ds_config)
    message = str(err.value)
    assert "\n" not in message and "optimizer.lr=1e+06" in message and "--overwrite" in message
    step = int(message.split("and step ")[1].split(";")[0]) if "and step " in message else None
    assert ("non-finite" in message and step is not None and step <= 10) or "skipped" in message, message
    _all_checkpoints_finite(tmp_path)


def test_the_command_line_prints_one_line_and_exits_2(tmp_path):
    recipe = dict(TINY, name="diverge")
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe))
    proc = subprocess.run([sys.executable, str(REPO / "launch" / "train.py"), "--recipe", str(recipe_path),
                           "--output_dir", str(tmp_path / "runs"), "--no_progress", "--set", "optimizer.lr=1000000.0"],
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert errors[0].startswith("error: training: diverged") and "newest finite checkpoint" in errors[0]
    assert not (tmp_path / "runs" / "diverge" / "result.json").exists()  # no result for a run that did not finish


def test_a_healthy_run_counts_no_skipped_steps(tmp_path):
    trainer, result = run(tiny_recipe(**{"training.epochs": 2}), tmp_path)
    rows = [yaml.safe_load(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert result["skipped_steps"] == 0 and rows[-1]["skipped_steps"] == 0 and trainer.guard.attempted > 0


def test_too_many_skipped_steps_stop_the_run(tmp_path):
    from dstrain.run.guard import DivergenceGuard
    from dstrain.recipe.spec import GuardSpec

    guard = DivergenceGuard(GuardSpec(min_steps=4, max_skipped_fraction=0.5), torch.device("cpu"), 0.1, lambda: None)
    for advanced in (True, False, False, True):
        guard.step_boundary(advanced)
    guard.check(2, [torch.zeros(3)])  # 2 of 4 skipped: not more than half
    guard.step_boundary(False)
    with pytest.raises(TrainingDiverged, match=r"skipped 3 of 5 optimizer steps"):
        guard.check(2, [torch.zeros(3)])
