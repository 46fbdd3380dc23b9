"""The imagefolder task: data-dir checks, transforms, and training on real image files (1 and 2 processes)."""
import json
import shutil

import pytest
import torch
from helpers import launch, run

from dstrain import ConfigError, parse_recipe
from dstrain.data.imagefolder import IMAGENET_MEAN, build_imagefolder_datasets
from dstrain.tasks import build_task
from dstrain.testing.images import make_tiny_imagefolder

SIZE = 16


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_imagefolder(tmp_path_factory.mktemp("data") / "tiny", classes=3, per_class=32,
                                 val_per_class=8, size=24)


def _recipe(data_dir, **training):
    return {
        "name": "tiny_imagefolder",
        "task": {"name": "imagefolder", "arch": "small_resnet", "data_dir": str(data_dir), "image_size": SIZE,
                 "arch_options": {"depth": 8, "width": 8, "norm": "none"}},
        "training": {"epochs": 3, "batch_size": 16, "seed": 0, **training},
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "lr_schedule": {"shape": "cosine", "unit": "epoch", "warmup": 0.5},
        "pruning": {"unit": "epoch", "schedule": {"kind": "gmp", "final_sparsity": 0.5, "start": 0, "end": 2,
                                                  "frequency": 1}},
    }


def test_datasets_have_the_layout_and_standard_transforms(tiny):
    train, val = build_imagefolder_datasets(tiny, image_size=SIZE)
    assert (len(train), len(val)) == (96, 24)
    assert train.classes == val.classes == ["class0", "class1", "class2"]
    assert sorted({label for _, label in val.samples}) == [0, 1, 2]
    assert {p.rsplit(".", 1)[1] for p, _ in train.samples} == {"jpg", "png"}
    x, _ = val[0]
    assert x.shape == (3, SIZE, SIZE) and x.dtype == torch.float32
    assert torch.equal(val[0][0], val[0][0])  # validation: deterministic resize + centre crop
    names = [type(t).__name__ for t in train.transform.transforms]
    assert names == ["RandomResizedCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    assert [type(t).__name__ for t in val.transform.transforms] == ["Resize", "CenterCrop", "ToTensor", "Normalize"]
    assert val.transform.transforms[0].size == int(SIZE * 256 / 224)
    assert tuple(train.transform.transforms[-1].mean) == IMAGENET_MEAN
    # class 0 is red: after normalisation its red channel is well above green and blue
    red = torch.stack([val[i][0] for i, (_, y) in enumerate(val.samples) if y == 0]).mean((0, 2, 3))
    assert red[0] > red[1] + 1 and red[0] > red[2] + 1


def _fresh(tmp_path, tiny):
    root = tmp_path / "copy"
    shutil.copytree(tiny, root)
    return root


@pytest.mark.parametrize("case,words", [
    ("unset", "task.data_dir: is not set"),
    ("missing", "does not exist"),
    ("file", "is a file, not a folder"),
    ("no_train", "has no train/ subfolder"),
    ("no_val", "has no val/ subfolder — lay the data out as DATA_DIR/train/<class>/<image>"),
    ("no_classes", "has no class subfolders"),
    ("empty_class", "class folder(s) without images: 'class1'"),
    ("val_differs", "val/ lacks 'class2'; val/ has 'zebra' not in train/"),
    ("val_fewer", "(val/ lacks 'class1') — use the same class folder names in train/ and val/"),
    ("one_class", "train has a single class folder ('class0'); a classifier needs at least 2 classes — "),
])
def test_bad_data_dir_names_the_field_and_the_fix(tmp_path, tiny, case, words):
    root = _fresh(tmp_path, tiny)
    data_dir = str(root)
    if case == "unset":
        data_dir = None
    elif case == "missing":
        data_dir = str(tmp_path / "nowhere")
    elif case == "file":
        data_dir = str(root / "train" / "class0" / "img000.jpg")
    elif case == "no_train":
        shutil.rmtree(root / "train")
    elif case == "no_val":
        shutil.rmtree(root / "val")
    elif case == "no_classes":
        shutil.rmtree(root / "train")
        (root / "train").mkdir()
    elif case == "empty_class":
        for f in (root / "train" / "class1").iterdir():
            f.unlink()
        (root / "train" / "class1" / "notes.txt").write_text("not an image")
    elif case == "val_differs":
        (root / "val" / "class2").rename(root / "val" / "zebra")
    elif case == "val_fewer":
        shutil.rmtree(root / "val" / "class1")
    elif case == "one_class":
        for split in ("train", "val"):
            for name in ("class1", "class2"):
                shutil.rmtree(root / split / name)
    task = build_task({"name": "imagefolder", "data_dir": data_dir, "image_size": SIZE})
    with pytest.raises(ConfigError) as info:
        task.build_datasets()  # the path the trainer takes
    assert info.value.field == "task.data_dir"
    assert words in str(info.value), str(info.value)
    assert info.value.fix


def test_hidden_folders_are_not_classes(tmp_path, tiny):
    """torchvision alone would make train/.hidden class 0 and shift every train label against val's."""
    root = _fresh(tmp_path, tiny)
    shutil.copytree(root / "train" / "class2", root / "train" / ".hidden")  # with images
    (root / "val" / ".ipynb_checkpoints").mkdir()  # without: torchvision alone refuses the folder
    (root / "val" / ".ipynb_checkpoints" / "notes.ipynb").write_text("{}")
    train, val = build_imagefolder_datasets(root, image_size=SIZE)
    assert train.classes == val.classes == ["class0", "class1", "class2"]
    assert len(train) == 96 and len(val) == 24
    for dataset in (train, val):
        assert all(f"/class{label}/" in path for path, label in dataset.samples)


def test_trains_and_evaluates_in_one_process(tmp_path, tiny):
    trainer, result = run(parse_recipe(_recipe(tiny)), tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert result["steps"] == 3 * (96 // 16)
    assert abs(result["sparsity"] - 0.5) < 0.01 and trainer.registry.revived() == 0
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert result["score"] >= 0.75  # 24 val images of 3 colour classes; chance is 1/3
    assert len(trainer.eval_loader.dataset) == 24


def test_two_processes_agree_and_see_the_whole_val_set(tmp_path, tiny):
    recipe = parse_recipe(_recipe(tiny, epochs=2)).model_dump()
    ranks = launch({"recipe": recipe, "out": str(tmp_path / "dist")}, tmp_path)
    r0, r1 = ranks[0]["state"], ranks[1]["state"]
    assert r0.keys() == r1.keys()
    for key in r0:
        assert torch.equal(r0[key], r1[key]), f"ranks differ in {key}"
    res = ranks[0]["result"]
    assert res["world_size"] == 2 and res["steps"] == 2 * (96 // 16)  # global batch 16 = 2 x 8
    assert abs(res["sparsity"] - 0.5) < 0.01 and int(r0["revived"]) == 0
    assert ranks[1]["result"]["score"] == res["score"]
    rows = [json.loads(line) for line in (tmp_path / "dist" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    # the logged validation loss is over all 24 images, not one rank's shard: recompute it here
    task = build_task(recipe["task"])
    model = task.build_model()
    model.load_state_dict({k[2:]: v for k, v in r0.items() if k.startswith("w/")})
    model.eval()
    _, val = task.build_datasets()
    images, labels = map(torch.stack, zip(*[(x, torch.tensor(y)) for x, y in val]))
    with torch.no_grad():
        logits = model(images)
    full = float(task.loss(logits, labels))
    assert rows[-1]["val_loss"] == pytest.approx(full, rel=1e-4)
    assert float(task.loss(logits[0::2], labels[0::2])) != pytest.approx(full, rel=1e-4)  # a shard would show
    assert rows[-1]["val_accuracy"] == pytest.approx(float((logits.argmax(-1) == labels).float().mean()))
