"""Broken data files are named (path and reason) before training, or skipped and counted."""
import json
import re
from pathlib import Path

import pytest
from helpers import run

from dstrain import ConfigError, build_task, parse_recipe
from dstrain.data.glue import load_glue
from dstrain.testing.images import make_tiny_imagefolder

SIZE = 16


def _folder(tmp_path: Path) -> Path:
    return make_tiny_imagefolder(tmp_path / "data", classes=3, per_class=8, val_per_class=2, size=20)


def _task(data_dir, **extra):
    return {"name": "imagefolder", "arch": "small_resnet", "data_dir": str(data_dir), "image_size": SIZE,
            "arch_options": {"depth": 8, "width": 4, "norm": "none"}, **extra}


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:200])


DAMAGES = {
    "truncated jpeg": (lambda p: _truncate(p), "OSError"),
    "zero bytes": (lambda p: p.write_bytes(b""), "UnidentifiedImageError"),
    "garbage": (lambda p: p.write_bytes(b"this is not an image" * 50), "UnidentifiedImageError"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_prescan_names_the_unreadable_image_before_training(tmp_path, damage):
    root = _folder(tmp_path)
    broken = root / "train" / "class1" / "img002.jpg"
    apply, reason = DAMAGES[damage]
    apply(broken)
    task = build_task(_task(root))
    with pytest.raises(ConfigError, match=rf"^task\.data_dir: unreadable train image {broken}: {reason}.* — "
                                          r"remove or replace it; or set task\.bad_images: skip") as err:
        task.build_datasets()  # the trainer's first data step, before any model or optimizer
    assert "\n" not in str(err.value)


def test_corrupt_validation_image_stops_before_training_even_when_skipping(tmp_path):
    root = _folder(tmp_path)
    broken = root / "val" / "class0" / "img001.png"
    _truncate(broken)
    recipe = parse_recipe({"name": "faulty", "task": _task(root, bad_images="skip"),
                           "training": {"epochs": 1, "batch_size": 8}, "optimizer": {"name": "sgd", "lr": 0.05}})
    with pytest.raises(ConfigError, match=rf"^task\.data_dir: unreadable val image {broken}: "):
        run(recipe, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_skip_mode_trains_and_counts_unreadable_images_per_epoch(tmp_path, capfd):
    root = _folder(tmp_path)
    broken = [root / "train" / "class0" / "img000.jpg", root / "train" / "class2" / "img003.png"]
    _truncate(broken[0])
    broken[1].write_bytes(b"")
    recipe = parse_recipe({"name": "faulty", "task": _task(root, bad_images="skip"),
                           "training": {"epochs": 2, "batch_size": 8}, "optimizer": {"name": "sgd", "lr": 0.05},
                           "lr_schedule": {"shape": "constant"}})
    _, result = run(recipe, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # 24 training images in 3 batches of 8, no batch dropped: every epoch meets both broken files
    assert [r["skipped_images"] for r in rows] == [2, 2]
    assert result["steps"] == 6
    err = capfd.readouterr().err
    for path in broken:
        assert f"skipped unreadable image {path}: " in err


# Decompression bombs without gigabytes: PIL's limit is lowered (the scan decodes in threads of
# this process and bad_images: skip reads in the main process with num_workers 0, so both see it).
# The tiny folder's images are at most 24x24 = 576 pixels, under the limit.
BOMB_LIMIT = 1000
BOMBS = {"warning": (40, "DecompressionBombWarning: Image size \\(1600 pixels\\) exceeds limit of 1000 pixels"),
         "error": (50, "DecompressionBombError: Image size \\(2500 pixels\\) exceeds limit of 2000 pixels")}


def _bomb(path: Path, side: int) -> Path:
    """A normal PNG whose size is over the lowered limit (over twice the limit: PIL raises, not only warns)."""
    from PIL import Image

    Image.new("RGB", (side, side), (200, 30, 30)).save(path)
    return path


@pytest.mark.parametrize("split,mode", [("train", "prescan"), ("val", "prescan"), ("val", "skip")])
@pytest.mark.parametrize("kind", list(BOMBS))
def test_decompression_bomb_is_an_unreadable_image_before_training(tmp_path, monkeypatch, kind, split, mode):
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", BOMB_LIMIT)
    root = _folder(tmp_path)
    side, reason = BOMBS[kind]
    bomb = _bomb(root / split / "class1" / "bomb.png", side)
    task = build_task(_task(root, bad_images=mode))
    with pytest.raises(ConfigError, match=rf"^task\.data_dir: unreadable {split} image {bomb}: {reason}") as err:
        task.build_datasets()
    assert "\n" not in str(err.value)


def test_skip_mode_skips_and_counts_decompression_bombs(tmp_path, monkeypatch, capfd):
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", BOMB_LIMIT)
    root = _folder(tmp_path)
    for name in ("img000.jpg", "img001.png"):  # 24 training images, as in the test above
        (root / "train" / "class0" / name).unlink()
    bombs = {kind: _bomb(root / "train" / "class0" / f"bomb_{kind}.png", side) for kind, (side, _) in BOMBS.items()}
    recipe = parse_recipe({"name": "faulty", "task": _task(root, bad_images="skip"),
                           "training": {"epochs": 1, "batch_size": 8}, "optimizer": {"name": "sgd", "lr": 0.05},
                           "lr_schedule": {"shape": "constant"}})
    _, result = run(recipe, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_images"] for r in rows] == [2]
    assert result["steps"] == 3
    err = capfd.readouterr().err
    for kind, path in bombs.items():
        assert re.search(rf"skipped unreadable image {path}: {BOMBS[kind][1]}", err), err


def test_binary_glue_tsv_is_named(tmp_path):
    folder = tmp_path / "SST-2"
    folder.mkdir()
    (folder / "train.tsv").write_bytes(b"sentence\tlabel\n\xff\xfe\x00\x81 binary\t1\n")
    (folder / "dev.tsv").write_text("sentence\tlabel\nfine .\t1\n")
    with pytest.raises(ValueError, match=rf"{folder / 'train.tsv'} is not UTF-8 text \(byte \d+: "):
        load_glue("sst2", tmp_path)


def test_skipped_count_of_a_partial_epoch_survives_a_resume(tmp_path):
    """metrics.jsonl after a mid-epoch resume equals the uninterrupted run's, skipped_images included."""
    import torch

    from dstrain.run import checkpoints as ckpt

    root = _folder(tmp_path)
    for i, path in enumerate(sorted((root / "train").rglob("*.*"))[::4]):  # 6 of 24 unreadable
        path.write_bytes(b"" if i % 2 else b"garbage" * 10)
    recipe = parse_recipe({"name": "faulty", "task": _task(root, bad_images="skip"),
                           "training": {"epochs": 2, "batch_size": 8}, "optimizer": {"name": "sgd", "lr": 0.05},
                           "lr_schedule": {"shape": "constant"}})
    run(recipe, tmp_path / "full")
    run(recipe, tmp_path / "split", max_steps=4)  # stops after the first batch of epoch 2
    step, folder = ckpt.complete_checkpoints(tmp_path / "split" / "checkpoints")[-1]
    state = torch.load(folder / "mp_rank_00_model_states.pt", weights_only=False)
    assert step == 4 and state["epoch_skipped"][0] > 0  # the partial epoch had already skipped some
    run(recipe, tmp_path / "split", resume="auto")
    full = (tmp_path / "full" / "metrics.jsonl").read_text()
    assert [json.loads(line)["skipped_images"] for line in full.splitlines()] == [6, 6]
    assert (tmp_path / "split" / "metrics.jsonl").read_text() == full
