"""Damaged checkpoints are never resumed from: each damage is named (file + reason);
`--resume auto` falls back to the newest checkpoint that verifies; a changed recipe
or a reused output folder is refused."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import run, tiny_recipe, weights_and_masks

from dstrain import ConfigError
from dstrain.cli import main as cli_main
from dstrain.run import checkpoints as ckpt
from dstrain.run.manifest import MANIFEST, CheckpointDamaged, verify_checkpoint
from dstrain.run.resume import SAFE_TO_CHANGE, recipe_differences

MODEL_FILE = "mp_rank_00_model_states.pt"


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A tiny run stopped at step 16 with --save_every 5: complete checkpoints at 15 (mid-epoch) and 16."""
    out = tmp_path_factory.mktemp("stopped")
    run(tiny_recipe(), out, max_steps=16, save_every=5)
    assert [s for s, _ in ckpt.complete_checkpoints(out / "checkpoints")] == [15, 16]
    return out


def _copy(stopped_run: Path, tmp_path: Path) -> Path:
    shutil.copytree(stopped_run, tmp_path / "run")
    return tmp_path / "run"


def _set_masks(path: Path, fill) -> None:
    state = torch.load(path, weights_only=False)
    masks = state["lr_scheduler"]["masks"]
    for key in masks:
        masks[key] = fill(masks[key])
    torch.save(state, path)


def _overwrite_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 64] = bytes(64)  # zeros over 64 bytes of tensor data: same size, other values
    path.write_bytes(bytes(data))


DAMAGES = {
    "deleted model file": (lambda d: (d / MODEL_FILE).unlink(), MODEL_FILE, "is missing"),
    "truncated model file": (lambda d: (d / MODEL_FILE).write_bytes((d / MODEL_FILE).read_bytes()[:1000]),
                             MODEL_FILE, "truncated"),
    "empty marker": (lambda d: (d / MANIFEST).write_text(""), MANIFEST, "is empty"),
    "garbage marker": (lambda d: (d / MANIFEST).write_bytes(b"\x00\xffnot json{"), MANIFEST, "not valid JSON"),
    "edited marker": (lambda d: (d / MANIFEST).write_text((d / MANIFEST).read_text().replace('"step": 16', '"step": 17')),
                      MANIFEST, "edited"),
    "overwritten weight bytes": (lambda d: _overwrite_middle(d / MODEL_FILE), MODEL_FILE, "SHA-256 mismatch"),
    "masks rewritten all-True": (lambda d: _set_masks(d / MODEL_FILE, torch.ones_like), MODEL_FILE,
                                 "SHA-256 mismatch"),
    "masks with flipped entries": (lambda d: _set_masks(d / MODEL_FILE, lambda m: ~m), MODEL_FILE,
                                   "SHA-256 mismatch"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_each_damage_is_named_and_auto_resume_falls_back(stopped_run, tmp_path, damage, capsys):
    apply, filename, reason = DAMAGES[damage]
    out = _copy(stopped_run, tmp_path)
    checkpoints = out / "checkpoints"
    newest, previous = checkpoints / ckpt.tag_for(16), checkpoints / ckpt.tag_for(15)
    apply(newest)
    with pytest.raises(CheckpointDamaged) as info:
        verify_checkpoint(newest)
    assert info.value.file.name == filename and reason in info.value.reason
    # explicit folder: one-line error naming the file
    with pytest.raises(ConfigError, match=rf"^--resume: .*{ckpt.tag_for(16)}/{filename}: .*{reason}") as err:
        ckpt.resolve_resume(str(newest), checkpoints)
    assert "\n" not in str(err.value)
    # auto: the previous one, with one line naming the skipped file and why
    lines = []
    assert ckpt.resolve_resume("auto", checkpoints, lines.append) == previous
    assert len(lines) == 1 and f"{ckpt.tag_for(16)}/{filename}" in lines[0] and reason in lines[0]
    # dstrain verify: exit 1, the damaged one named, the other OK
    capsys.readouterr()
    assert cli_main(["verify", str(checkpoints)]) == 1
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(f"OK {previous}") and printed[1].startswith(f"DAMAGED {newest}: ")


def test_verify_command_passes_intact_checkpoints_and_rejects_non_folders(stopped_run, capsys, tmp_path):
    assert cli_main(["verify", str(stopped_run / "checkpoints" / ckpt.tag_for(16))]) == 0
    assert "OK " in capsys.readouterr().out
    assert cli_main(["verify", str(tmp_path / "nowhere")]) == 2


def test_auto_resume_with_every_checkpoint_damaged_is_refused(stopped_run, tmp_path):
    out = _copy(stopped_run, tmp_path)
    for _, folder in ckpt.complete_checkpoints(out / "checkpoints"):
        (folder / MODEL_FILE).write_bytes(b"")
    with pytest.raises(ConfigError, match=r"^--resume auto: none of the 2 checkpoint\(s\) .* --overwrite"):
        ckpt.resolve_resume("auto", out / "checkpoints", lambda line: None)


def test_truncated_newest_resumes_from_previous_bit_identical_with_identical_metrics(stopped_run, tmp_path, capsys):
    """The fallback checkpoint (step 15, mid-epoch) ends exactly like a run never stopped."""
    reference, _ = run(tiny_recipe(), tmp_path / "ref")
    out = _copy(stopped_run, tmp_path)
    model = out / "checkpoints" / ckpt.tag_for(16) / MODEL_FILE
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    capsys.readouterr()
    resumed, result = run(tiny_recipe(), out, resume="auto")
    printed = capsys.readouterr().out
    assert f"skipping checkpoint {ckpt.tag_for(16)}: {model}: has " in printed
    assert f"resumed from {out / 'checkpoints' / ckpt.tag_for(15)} at step 15" in printed
    assert result["steps"] == reference.controller.total_steps
    want, got = weights_and_masks(reference), weights_and_masks(resumed)
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key
    # the partial epoch's running loss came back from the checkpoint: metrics.jsonl is identical too
    assert (out / "metrics.jsonl").read_text() == (tmp_path / "ref" / "metrics.jsonl").read_text()


def test_resume_under_another_recipe_is_refused_naming_the_fields(stopped_run, tmp_path):
    out = _copy(stopped_run, tmp_path)
    dense = tiny_recipe(**{"pruning.schedule": {"kind": "dense"}})
    with pytest.raises(ConfigError, match=r"^--resume: checkpoint step000000016 was trained under another recipe "
                                          r"\(pruning\.schedule\.kind: 'gmp' -> 'dense'"):
        run(dense, out, resume="auto")
    with pytest.raises(ConfigError, match=r"optimizer\.lr: 0\.1 -> 0\.2"):
        run(tiny_recipe(**{"optimizer.lr": 0.2}), out, resume="auto")
    with pytest.raises(ConfigError, match=r"task\.arch_options\.width: 8 -> 16"):
        run(tiny_recipe(**{"task.arch_options": {"depth": 8, "width": 16}}), out, resume="auto")


def test_recipe_differences_ignore_only_the_safe_fields():
    base = tiny_recipe().model_dump(mode="json")
    changed = json.loads(json.dumps(base))
    changed.update(name="other", description="x")
    changed["training"]["eval_every"] = 3
    changed["optimizer"]["backend"] = "torch"
    changed["task"]["num_workers"] = 4
    assert recipe_differences(base, changed) == []
    changed["training"]["batch_size"] = 64
    changed["optimizer"]["name"] = "adamw"
    changed["task"]["arch_options"]["depth"] = 14
    assert [k for k, _, _ in recipe_differences(base, changed)] == [  # the backend is safe for SGD only
        "task.arch_options.depth", "training.batch_size", "optimizer.name", "optimizer.backend"]
    assert "training.eval_every" in SAFE_TO_CHANGE and "training.epochs" not in SAFE_TO_CHANGE


def test_fresh_run_into_a_folder_with_checkpoints_needs_resume_or_overwrite(stopped_run, tmp_path):
    out = _copy(stopped_run, tmp_path)
    with pytest.raises(ConfigError, match=r"^--output_dir: .* already holds checkpoints .* --resume auto .* --overwrite"):
        run(tiny_recipe(), out, max_steps=2)
    (out / "tb").mkdir()
    (out / "tb" / "events.out.tfevents.old").write_text("old run")
    _, result = run(tiny_recipe(), out, max_steps=2, overwrite=True)
    assert result["steps"] == 2
    assert [s for s, _ in ckpt.complete_checkpoints(out / "checkpoints")] == [2]
    assert not (out / "metrics.jsonl").exists() and not (out / "tb").exists()  # the old run's logs went too


def test_zero2_optimizer_shards_are_in_the_manifest(tmp_path):
    """Every file DeepSpeed writes is covered, not only the model states: here a ZeRO-2 optimizer shard."""
    run(tiny_recipe(), tmp_path, max_steps=4, ds_config={"zero_optimization": {"stage": 2}})
    folder = ckpt.complete_checkpoints(tmp_path / "checkpoints")[-1][1]
    listed = set(json.loads((folder / MANIFEST).read_text())["files"])
    on_disk = {p.name for p in folder.iterdir() if p.name != MANIFEST}
    shard = "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    assert listed == on_disk and shard in listed and MODEL_FILE in listed
    (folder / shard).write_bytes((folder / shard).read_bytes()[:-10])
    with pytest.raises(ConfigError, match=rf"{shard}: has \d+ bytes, the manifest says \d+ \(truncated\)"):
        ckpt.resolve_resume(str(folder), tmp_path / "checkpoints")


def test_masks_rewritten_with_a_regenerated_manifest_are_still_refused(stopped_run, tmp_path):
    """Defence in depth: the manifest records the mask sparsity, checked after loading."""
    from dstrain.run.manifest import read_manifest, write_manifest

    out = _copy(stopped_run, tmp_path)
    newest = out / "checkpoints" / ckpt.tag_for(16)
    _set_masks(newest / MODEL_FILE, torch.ones_like)
    data = read_manifest(newest)
    write_manifest(newest, {k: v for k, v in data.items() if k not in ("files", "manifest_sha256", "format")})
    verify_checkpoint(newest)  # the hashes agree with the rewritten file now
    with pytest.raises(ConfigError, match=r"^--resume: .*step000000016: loaded masks have sparsity 0\.000000, "
                                          r"the checkpoint recorded 0\.\d+"):
        run(tiny_recipe(), out, resume=str(newest))


def test_a_renamed_copy_of_an_older_checkpoint_is_damage_not_the_newest(stopped_run, tmp_path):
    """Checkpoints are the step their manifest records: a copy of step 15 named step 99 is skipped, never rotated in."""
    out = _copy(stopped_run, tmp_path)
    shutil.copytree(out / "checkpoints" / ckpt.tag_for(15), out / "checkpoints" / ckpt.tag_for(99))
    assert [s for s, _ in ckpt.complete_checkpoints(out / "checkpoints")] == [15, 16]
    logged = []
    assert ckpt.resolve_resume("auto", out / "checkpoints", logged.append).name == ckpt.tag_for(16)
    assert "renamed or copied" in logged[0] and ckpt.tag_for(99) in logged[0]
    trainer, _ = run(tiny_recipe(), out, resume="auto", max_steps=20, save_every=2, keep_last=1)
    names = sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("step"))
    assert names == [ckpt.tag_for(20), ckpt.tag_for(99)]  # rotation kept the newest genuine one, left the copy alone


def test_a_file_where_a_checkpoint_folder_goes_is_one_line(stopped_run, tmp_path):
    out = _copy(stopped_run, tmp_path)
    (out / "checkpoints" / ckpt.tag_for(20)).write_text("not a folder")
    with pytest.raises(ConfigError, match=r"step000000020 is a file where a checkpoint folder goes"):
        run(tiny_recipe(), out, resume="auto", max_steps=20, save_every=2)


def test_resuming_under_another_precision_is_refused(stopped_run, tmp_path):
    out = _copy(stopped_run, tmp_path)
    with pytest.raises(ConfigError, match=r"^ds_config: checkpoint step000000016 was written with fp32 training, "
                                          r"this run uses bf16"):
        run(tiny_recipe(), out, resume="auto", max_steps=20, ds_config={"bf16": {"enabled": True}})


def test_a_failed_checkpoint_write_is_one_line_and_keeps_the_last_checkpoint(stopped_run, tmp_path, monkeypatch):
    """A full disk makes torch.save raise "iostream error" deep in DeepSpeed: the user gets the path and the cause."""
    from deepspeed.runtime.engine import DeepSpeedEngine

    out = _copy(stopped_run, tmp_path)

    def full_disk(self, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 192 vs 128: file write failed")

    monkeypatch.setattr(DeepSpeedEngine, "save_checkpoint", full_disk)
    with pytest.raises(ConfigError, match=r"cannot write checkpoint step 18 to .*\.staging/step000000018 \(.*file "
                                          r"write failed; .*\); the newest complete checkpoint, step000000016, is intact"):
        run(tiny_recipe(), out, resume="auto", max_steps=20, save_every=2)
    assert [s for s, _ in ckpt.complete_checkpoints(out / "checkpoints")] == [15, 16]
    assert not (out / "checkpoints" / ".staging" / ckpt.tag_for(18)).exists()


def test_resume_and_overwrite_together_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"^--overwrite: given with --resume auto"):
        run(tiny_recipe(), tmp_path, resume="auto", overwrite=True)


def test_a_run_file_that_cannot_be_written_is_one_line(tmp_path, monkeypatch):
    """metrics.jsonl on a full disk: the user gets the file and the cause, not an OSError traceback."""
    import errno

    from dstrain.run.rundir import RunDir

    real = Path.write_text

    def full(self, *args, **kwargs):
        if self.name == "metrics.jsonl":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(ConfigError, match=r"cannot write .*metrics\.jsonl \(No space left on device\)"):
        RunDir(tmp_path).write(tmp_path / "metrics.jsonl", "{}\n")
