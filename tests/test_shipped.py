"""Every shipped recipe (recipes/**/*.yaml, found by glob) trains through the real launch/train.py.

Each recipe runs as written -- its architecture, channels_last, label smoothing, distillation,
no_weight_decay, LR shape, pruning scope and schedule kind -- under the DeepSpeed config its
comment names (``launch/configs/X.json``; otherwise launch/ds_config.json, the launcher's
default), for MAX_STEPS optimizer steps in one CPU process, through ``launch/train.py``'s
``main(argv)`` (the same function the script runs; in-process to pay for torch/DeepSpeed
start-up once).  Only these overrides are applied, all with ``--set``:

* data and sizes, per task name in STAND_INS (the one place to extend for a new task kind):
  a generated ImageNet-layout folder at 32 px for ``imagefolder``, 32 px and 24 examples for
  ``synthetic``, a 2-layer BERT + WordPiece tokenizer folder and generated GLUE TSVs (the
  recipe's own GLUE task, its own TSV layout) at 16 tokens for ``glue`` (the same folder is the
  KD teacher), batch 8, and for ``causal_lm`` a 2-layer random Llama with a byte-level tokenizer on generated
  text at 16 tokens (also the teacher), calibration 4 x 16 tokens -- the real sizes do not fit a CPU test;
* loader workers 0 (a recipe's ImageNet decoding workers would only add process start-up);
* step units for the pruning schedule (SCHEDULE_STEPS), so that every pruning recipe's first
  mask update happens inside the run (at step 1) and the run ends in a compressed phase;
* a config's fixed micro-batch/accumulation become "auto", since the batch is now 8.

One recipe of each shape (same keys, numbers aside) runs by default, the others are marked
slow (``pytest -m slow tests/test_shipped.py`` runs them); see _params.

Checked for each: exit status 0, MAX_STEPS steps, and for pruning recipes, at least one mask
update in the saved checkpoint, with exactly round(target x prunable) pruned weights (per
tensor for layerwise scope) and none revived.  On main 50f33f4 (run with -m "") 26 of its 45
recipes fail, all 24 in recipes/resnet50/ and both in recipes/bench/: 25 in deepspeed.initialize
("self.stride(-1) must be 1 to view Float as Byte", channels-last weights) and
bench/resnet50_synthetic_sparse90.yaml in the first mask update (pruning.py's mask.view(-1)).
"""
from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
RECIPES = sorted(REPO.glob("recipes/**/*.yaml"))
MAX_STEPS = 3
BATCH = 8

sys.path.insert(0, str(REPO / "launch"))
from train import main  # noqa: E402  (launch/train.py: the real entry point)

from dstrain.sparsity.nm import is_nm, nm_eligible, parse_pattern  # noqa: E402
from dstrain.testing.glue import WORDS, write_tiny_glue  # noqa: E402


# --- stand-in data, built once per session ---------------------------------------------------------
class StandIns:
    """Lazily built stand-in data folders shared by all recipes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: Dict[str, str] = {}

    def _once(self, key: str, build: Callable[[Path], Any]) -> str:
        if key not in self._cache:
            path = self.root / key
            build(path)
            self._cache[key] = str(path)
        return self._cache[key]

    def imagefolder(self) -> str:
        from dstrain.testing.images import make_tiny_imagefolder

        # 3 classes x 8 = 24 training images: 3 steps of 8 = one epoch, so the evaluation runs too
        return self._once("imagefolder", lambda p: make_tiny_imagefolder(p, classes=3, per_class=8,
                                                                          val_per_class=4, size=36))

    def fashion(self) -> str:
        from dstrain.testing.idx import write_fashion_stand_in

        return self._once("fashion", lambda p: write_fashion_stand_in(p, n_train=48, n_test=16))

    def glue(self, task: str) -> str:
        return self._once(f"glue_{task}", lambda p: write_tiny_glue(p, task))

    def bert(self, task: str) -> str:
        from dstrain.data.glue import get_task_spec

        def build(path: Path) -> None:
            from dstrain.testing.tiny_bert import make_tiny_bert

            model, tok = make_tiny_bert(None, [" ".join(WORDS)] * 3, num_labels=get_task_spec(task).num_labels)
            model.save_pretrained(path)
            tok.save_pretrained(path)

        return self._once(f"bert_{task}", build)

    def llama(self) -> str:
        from dstrain.testing.tiny_llama import make_tiny_llama

        return self._once("llama", lambda p: make_tiny_llama(str(p)))

    def text(self) -> str:
        from dstrain.testing.tiny_llama import write_tiny_text

        # ~16k byte tokens: 16-token blocks give every shipped LLM recipe's short fine-tuning >= MAX_STEPS steps
        return self._once("text.txt", lambda p: write_tiny_text(str(p), sentences=250))


def _glue(s: StandIns, recipe: Dict[str, Any]) -> Dict[str, Any]:
    task = recipe["task"]["glue_task"]
    out = {"task.model_dir": s.bert(task), "task.data_dir": s.glue(task), "task.max_length": 16}
    if recipe.get("distillation"):
        out["distillation.teacher"] = s.bert(task)  # a small teacher with the task's label count
    return out


def _causal_lm(s: StandIns, recipe: Dict[str, Any]) -> Dict[str, Any]:
    out = {"task.model": s.llama(), "task.data": [s.text()], "task.max_length": 16}
    criterion = recipe.get("pruning", {}).get("criterion")
    if criterion in recipe.get("pruning", {}):  # calibration windows as long as the stand-in's blocks
        out[f"pruning.{criterion}.calibration_samples"] = 4
        out[f"pruning.{criterion}.seq_len"] = 16
    teacher = (recipe.get("distillation") or {}).get("teacher")
    if teacher not in (None, "same"):
        out["distillation.teacher"] = s.llama()  # the dense tiny model
    return out


#: task name -> overrides (data and sizes only).  A new task kind adds one entry here.
STAND_INS: Dict[str, Callable[[StandIns, Dict[str, Any]], Dict[str, Any]]] = {
    "digits": lambda s, r: {},  # the embedded sklearn digits set is already small
    "imagefolder": lambda s, r: {"task.data_dir": s.imagefolder(), "task.image_size": 32, "task.num_workers": 0},
    "synthetic": lambda s, r: {"task.image_size": 32, "task.synthetic_size": 24, "task.num_workers": 0},
    "glue": _glue,
    "fashion_mnist": lambda s, r: {"task.data_dir": s.fashion()},  # IDX files of the real format
    "causal_lm": _causal_lm,  # a 2-layer random Llama with a byte-level tokenizer, generated text
}

#: schedule kind -> step-unit fields: first mask update at step 1, compressed at the last step.
SCHEDULE_STEPS: Dict[str, Dict[str, Any]] = {
    "dense": {},
    "constant": {},  # pruned at step 0
    "oneshot": {"at": 1},
    "gmp": {"start": 1, "end": MAX_STEPS, "frequency": 1},
    "acdc": {"warmup": 1, "compressed": MAX_STEPS - 1, "decompressed": 1, "final": 1},
}


def overrides_for(recipe: Dict[str, Any], stand_ins: StandIns) -> Dict[str, Any]:
    task = recipe.get("task", {}).get("name", "digits")
    if task not in STAND_INS:
        raise AssertionError(f"no stand-in data for task {task!r}: add an entry to STAND_INS in {__file__}")
    out = dict(STAND_INS[task](stand_ins, recipe))
    if recipe["training"]["batch_size"] > BATCH and task != "digits":
        out["training.batch_size"] = BATCH
    schedule = recipe.get("pruning", {}).get("schedule", {"kind": "dense"})
    if schedule["kind"] not in SCHEDULE_STEPS:
        raise AssertionError(f"no step-unit override for schedule kind {schedule['kind']!r}: add it to SCHEDULE_STEPS")
    steps = dict(SCHEDULE_STEPS[schedule["kind"]])
    if schedule.get("last_decompressed"):
        steps["last_decompressed"] = 1
    if steps:
        out["pruning.unit"] = "step"
        out.update({f"pruning.schedule.{k}": v for k, v in steps.items()})
    return out


def ds_config_for(text: str, tmp: Path) -> Path:
    """The config the recipe's comment names, or the launcher's default; fixed micro-batches become auto."""
    named = re.search(r"launch/configs/([\w.-]+\.json)", text)
    path = REPO / "launch" / "configs" / named.group(1) if named else REPO / "launch" / "ds_config.json"
    assert path.is_file(), f"the recipe names {path}, which does not exist"
    cfg = json.loads(path.read_text())
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        if key in cfg:
            cfg[key] = "auto"
    out = tmp / path.name
    out.write_text(json.dumps(cfg))
    return out


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    return StandIns(tmp_path_factory.mktemp("stand_ins"))


def _cli(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def _checkpoint_state(run_dir: Path) -> Dict[str, Any]:
    files = sorted(run_dir.glob("checkpoints/**/mp_rank_00_model_states.pt"))
    assert files, f"no checkpoint under {run_dir}"
    return torch.load(files[-1], map_location="cpu", weights_only=False)


def _shape(value: Any) -> Any:
    """The recipe with every number blanked: what code paths it takes, not how long or how sparse."""
    if isinstance(value, bool) or not isinstance(value, (int, float, dict, list)):
        return value
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items() if k not in ("name", "description")}
    if isinstance(value, list):
        return [_shape(v) for v in value]
    return None


def _params() -> List[Any]:
    """One recipe per shape runs by default; its siblings (same keys, other numbers) are marked slow.

    Siblings differ only in lengths, sparsities and LR values -- and the step-unit overrides
    replace the lengths -- so they take the same code paths.  A recipe with a new task, arch,
    schedule kind, scope, option or named config is a new shape and runs by default.
    """
    seen = set()
    params = []
    for path in RECIPES:
        text = path.read_text()
        named = re.search(r"launch/configs/([\w.-]+\.json)", text)
        key = json.dumps([_shape(yaml.safe_load(text)), named and named.group(1)], sort_keys=True)
        marks = [pytest.mark.slow] if key in seen else []
        seen.add(key)
        params.append(pytest.param(path, marks=marks, id=str(path.relative_to(REPO / "recipes"))))
    return params


@pytest.mark.parametrize("path", _params())
def test_shipped_recipe_trains(path, stand_ins, tmp_path):
    text = path.read_text()
    recipe = yaml.safe_load(text)
    sets = overrides_for(recipe, stand_ins)
    argv = ["--recipe", str(path), "--deepspeed_config", str(ds_config_for(text, tmp_path)),
            "--output_dir", str(tmp_path / "runs"), "--max_steps", str(MAX_STEPS), "--no_progress"]
    for key, value in sets.items():
        argv += ["--set", f"{key}={_cli(value)}"]
    assert main(argv) == 0, f"launch/train.py {' '.join(argv)}"
    run_dir = tmp_path / "runs" / recipe["name"]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["steps"] == MAX_STEPS
    kind = recipe.get("pruning", {}).get("schedule", {}).get("kind", "dense")
    if kind != "dense":
        scheduler = _checkpoint_state(run_dir)["lr_scheduler"]
        assert scheduler["history"], "no mask update happened"
        target = scheduler["history"][-1]["sparsity"]
        masks = scheduler["masks"]
        pattern = parse_pattern(str(recipe["pruning"].get("pattern", "unstructured")))
        if pattern is not None:  # N:M: every eligible layer exactly N of each M kept, the others dense
            for name, m in masks.items():
                assert is_nm(m, pattern) if nm_eligible(m, pattern) else bool(m.all()), name
        elif recipe.get("pruning", {}).get("scope", "global") == "layerwise":
            for name, m in masks.items():
                assert int((~m).sum()) == round(target * m.numel()), name
        else:
            total = sum(m.numel() for m in masks.values())
            assert sum(int((~m).sum()) for m in masks.values()) == round(target * total)
        assert result["revived"] == 0 and result["sparsity"] > 0
    shutil.rmtree(run_dir)  # ResNet50 checkpoints are ~200 MB each
