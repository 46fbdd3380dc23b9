"""Crashes and bad layouts: a kill loses at most one checkpoint interval; resume is exact."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import TINY, run, subprocess_env, tiny_recipe, weights_and_masks

from dstrain import ConfigError
from dstrain.run import checkpoints as ckpt
from dstrain.run.manifest import rewrite_manifest

REPO = Path(__file__).resolve().parent.parent


def _final_checkpoint_state(run_dir: Path):
    step, folder = ckpt.complete_checkpoints(run_dir / "checkpoints")[-1]
    model_states = torch.load(folder / "mp_rank_00_model_states.pt", weights_only=False)
    state = {f"w/{k}": v.float() for k, v in model_states["module"].items()}
    state.update({f"m/{k}": v for k, v in model_states["lr_scheduler"]["masks"].items()})
    return step, state


def test_sigkill_then_resume_auto_matches_uninterrupted_run(tmp_path):
    recipe = dict(TINY, name="killme", training={"epochs": 10, "batch_size": 128, "seed": 0})
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe))
    cmd = [sys.executable, str(REPO / "launch" / "train.py"), "--recipe", str(recipe_path),
           "--output_dir", str(tmp_path / "runs"), "--save_every", "10", "--no_progress"]
    env = subprocess_env()
    # The reference runs the same command uninterrupted (same process settings, same float order).
    ref_cmd = [c if c != str(tmp_path / "runs") else str(tmp_path / "ref") for c in cmd]
    subprocess.run(ref_cmd, env=env, check=True, capture_output=True, timeout=300)
    total_steps, expected = _final_checkpoint_state(tmp_path / "ref" / "killme")
    log = open(tmp_path / "killed.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    run_dir = tmp_path / "runs" / "killme"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        done = ckpt.complete_checkpoints(run_dir / "checkpoints")
        if done and done[-1][0] >= 20:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait(timeout=60)
    log.close()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    assert not (run_dir / "result.json").exists()
    killed_at = ckpt.complete_checkpoints(run_dir / "checkpoints")[-1][0]
    assert 20 <= killed_at < total_steps

    resumed = subprocess.run(cmd + ["--resume", "auto"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout and "final: val_accuracy=" in resumed.stdout
    step, got = _final_checkpoint_state(run_dir)
    assert step == total_steps == 110
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_resume_auto_ignores_half_written_checkpoints(tmp_path):
    recipe = tiny_recipe()
    run(recipe, tmp_path, max_steps=12, save_every=5)
    checkpoints = tmp_path / "checkpoints"
    assert [s for s, _ in ckpt.complete_checkpoints(checkpoints)] == [11, 12]  # epoch end (11), stop (12); keep_last=2
    # A kill during a save leaves the staging folder; one during the rename leaves no marker.
    newest = checkpoints / ckpt.tag_for(12)
    shutil.copytree(newest, checkpoints / ".staging" / ckpt.tag_for(15))
    (checkpoints / ckpt.tag_for(14)).mkdir()
    shutil.copy(newest / "mp_rank_00_model_states.pt", checkpoints / ckpt.tag_for(14))
    assert ckpt.resolve_resume("auto", checkpoints) == newest
    resumed, result = run(recipe, tmp_path, resume="auto")
    assert result["steps"] == resumed.controller.total_steps
    # the next save cleared nothing it should not have: newest complete checkpoints are kept
    assert ckpt.complete_checkpoints(checkpoints)[-1][0] == result["steps"]


def test_skipped_overflow_step_does_not_advance_the_recipe(tmp_path):
    """A non-finite gradient makes DeepSpeed skip the step; the recipe clock must not move."""
    from dstrain import TrainerCallback

    class PoisonOnce(TrainerCallback):
        def __init__(self):
            self.boundaries, self.handle = 0, None

        def on_step_end(self, trainer):
            self.boundaries += 1
            if self.boundaries == 6 and self.handle is None:
                param = next(trainer.engine.module.parameters())
                self.handle = param.register_hook(lambda g: g * float("nan"))
            elif self.handle is not None:
                self.handle.remove()

    poison = PoisonOnce()
    trainer, result = run(tiny_recipe(), tmp_path, callbacks=[poison], ds_config={"bf16": {"enabled": True}})
    assert trainer.engine.skipped_steps == 1
    assert result["steps"] == poison.boundaries - 1
    assert all(torch.isfinite(p).all() for p in trainer.engine.module.parameters())
    assert result["revived"] == 0 and abs(result["sparsity"] - 0.8) < 1e-4


def test_fp16_on_cpu_is_refused_with_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"ds_config\.fp16\.enabled: .* use \"bf16\""):
        run(tiny_recipe(), tmp_path, ds_config={"fp16": {"enabled": True}})


def test_a_changed_zero_layout_is_refused(tmp_path):
    run(tiny_recipe(), tmp_path / "a", max_steps=4)
    marker = tmp_path / "a" / "checkpoints" / ckpt.tag_for(4) / ckpt.MARKER
    layout = json.loads(marker.read_text())
    assert layout["world_size"] == 1 and layout["zero_stage"] == 0
    # as if written by a 4-process ZeRO-2 run: a signed manifest with that layout
    rewrite_manifest(marker.parent, zero_stage=2, world_size=4)
    with pytest.raises(ConfigError, match="written with ZeRO stage 2"):
        run(tiny_recipe(), tmp_path / "a", resume="auto")


@pytest.mark.parametrize("stage", [0, 2])
def test_resume_at_an_acdc_boundary_with_momentum_reset(tmp_path, stage):
    """Stopped right before a decompression (pending set-up), resumed: same as never stopped."""
    recipe = tiny_recipe(**{"pruning.schedule": {"kind": "acdc", "sparsity": 0.9, "warmup": 3, "compressed": 6,
                                                 "decompressed": 4, "final": 6, "reset_momentum": True}})
    ds_config = {"zero_optimization": {"stage": stage}}
    full, _ = run(recipe, tmp_path / "full", ds_config=ds_config)
    _, half = run(recipe, tmp_path / "split", ds_config=ds_config, max_steps=9)  # step 9 decompresses
    assert half["steps"] == 9
    resumed, _ = run(recipe, tmp_path / "split", ds_config=ds_config, resume="auto")
    want, got = weights_and_masks(full), weights_and_masks(resumed)
    for key in want:
        assert torch.equal(want[key], got[key]), key
