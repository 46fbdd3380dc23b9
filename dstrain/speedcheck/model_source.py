"""The model a user names on the command line, built on the CPU in fp32, with what the check needs to run it.

Accepted, tried in this order (the first that matches decides, so a folder named like a
torchvision model is still read as a folder):

* ``bert-base``: ``transformers.BertModel(BertConfig())`` (BertConfig's defaults are BERT-base);
* a recipe YAML: the architecture of its task, its prunable layers and its final sparsity;
* a folder written by ``dstrain export``: the exported model, with the sparsity its weights really have;
* a Hugging Face folder with ``config.json``: ``AutoModel.from_config`` (architecture only);
* a torchvision classification model name: ``torchvision.models.get_model(name, weights=None)``.

Weights are random wherever the source has none: speed does not depend on the values, and
nothing is ever downloaded.  Anything else is one :class:`~dstrain.errors.ConfigError` naming
``MODEL``, the value and the fix.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

import torch
from torch import nn

from dstrain.errors import ConfigError

ARG = "MODEL"
BERT_BASE = "bert-base"
EXAMPLES = ("e.g. resnet50, bert-base, recipes/digits_gmp90.yaml, or a folder written by dstrain export or "
            "save_pretrained")
NATIVE_IMAGE_SIZE = {"digits": 8, "fashion_mnist": 28}
"""Tasks whose data has one fixed size: their recipes' ``image_size`` (default 224) is not what the model sees."""
DEFAULT_IMAGE_SIZE = 224
DEFAULT_SEQ_LEN = 128
DEFAULT_SPARSITY = 0.9
EXPORT_PRUNED_MIN_ZEROS = 0.01
"""An exported layer counts as pruned when at least this fraction of its weight is exactly 0 (trained dense
weights have essentially none)."""

Inputs = Tuple[Tuple[Any, ...], Dict[str, Any]]
InputMaker = Callable[[int, torch.device, torch.dtype], Inputs]


@dataclass
class ModelSpec:
    """A model ready to be measured: where it came from, how to feed it, and which layers would be sparse."""

    name: str
    source: str
    """One of ``bert-base``, ``recipe``, ``export``, ``hf-folder``, ``torchvision``."""
    model: nn.Module
    kind: str
    """``image`` or ``text``: what :attr:`make_input` builds."""
    input_desc: str
    make_input: InputMaker
    """(batch, device, dtype) -> (args, kwargs) of one forward; images take ``dtype``, token ids stay int64."""
    prunable: Set[str]
    """Names of the Linear/Conv2d modules whose weight the recipe/export makes (or would make) sparse."""
    sparsity: Optional[float] = None
    """The source's own sparsity (a recipe's final target, an export's measured one); None: the source has none."""
    pattern: str = "unstructured"
    """``unstructured`` or ``N:M``: which sparse path is the user's own."""
    notes: List[str] = field(default_factory=list)


def image_input(channels: int, size: int) -> InputMaker:
    def make(batch: int, device: torch.device, dtype: torch.dtype) -> Inputs:
        return (torch.randn(batch, channels, size, size, device=device, dtype=dtype),), {}

    return make


def token_input(vocab_size: int, seq_len: int, key: str = "input_ids") -> InputMaker:
    def make(batch: int, device: torch.device, dtype: torch.dtype) -> Inputs:
        return (), {key: torch.randint(0, vocab_size, (batch, seq_len), device=device)}

    return make


def default_prunable(model: nn.Module) -> Set[str]:
    """dstrain's default choice (every Conv/Linear weight except the first conv and the classifier)."""
    from dstrain.sparsity.registry import PrunableSelection, select_prunable

    return _modules_of(select_prunable(model, PrunableSelection()))


def _modules_of(params: Dict[str, Any]) -> Set[str]:
    return {name[: -len(".weight")] if name.endswith(".weight") else "" for name in params if name.endswith("weight")}


def _check_seq_len(config: Any, seq_len: int, field: str) -> None:
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and seq_len > limit:
        raise ConfigError(field, f"{seq_len} exceeds the model's {limit} positions", f"use at most {limit}")


def _hf_spec(name: str, source: str, model: nn.Module, seq_len: Optional[int], image_size: Optional[int],
             prunable: Optional[Set[str]] = None, seq_len_field: str = "--seq-len") -> ModelSpec:
    """A transformers model fed by its main input: token ids, or images for a vision config.

    ``seq_len_field`` names where a too-long sequence length came from (the option, or the recipe/export).
    """
    config = model.config
    key = getattr(model, "main_input_name", "input_ids")
    if key == "pixel_values":
        size = image_size or int(getattr(config, "image_size", DEFAULT_IMAGE_SIZE))
        channels = int(getattr(config, "num_channels", 3))
        make, kind, desc = image_input(channels, size), "image", f"{channels}x{size}x{size} images"
    elif key == "input_ids":
        seq = seq_len or DEFAULT_SEQ_LEN
        _check_seq_len(config, seq, seq_len_field)
        make, kind, desc = token_input(int(config.vocab_size), seq), "text", f"{seq} tokens"
    else:
        raise ConfigError(ARG, f"{name}: the model's input {key!r} is neither token ids nor images",
                          "speedcheck feeds input_ids or pixel_values models")
    return ModelSpec(name, source, model.float().eval(), kind, desc, make,
                     default_prunable(model) if prunable is None else prunable)


def _bert_base(seq_len: Optional[int]) -> ModelSpec:
    from transformers import BertConfig, BertModel

    spec = _hf_spec(BERT_BASE, BERT_BASE, BertModel(BertConfig()), seq_len, None)
    spec.notes.append("BertModel(BertConfig()): BERT-base, random weights; the pooler counts as the classifier")
    return spec


def _hf_folder(path: Path, seq_len: Optional[int], image_size: Optional[int]) -> ModelSpec:
    from transformers import AutoConfig, AutoModel

    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
        model = AutoModel.from_config(config)
    except (ValueError, OSError, KeyError) as err:
        raise ConfigError(ARG, f"{path}: config.json does not build a transformers model "
                          f"({' '.join(str(err).split())[:200]})", "pass a folder written by save_pretrained") from None
    spec = _hf_spec(str(path), "hf-folder", model, seq_len, image_size)
    spec.notes.append(f"{type(model).__name__} from {path}/config.json (architecture only, random weights)")
    return spec


def torchvision_names() -> List[str]:
    """Classification models only: detection/segmentation builders would download backbone weights."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _torchvision(name: str, image_size: Optional[int]) -> ModelSpec:
    import torchvision

    model = torchvision.models.get_model(name, weights=None)
    size = image_size or DEFAULT_IMAGE_SIZE
    return ModelSpec(name, "torchvision", model.eval(), "image", f"3x{size}x{size} images", image_input(3, size),
                     default_prunable(model), notes=[f"torchvision.models.get_model({name!r}, weights=None)"])


def _recipe_sparsity(recipe: Any) -> Tuple[Optional[float], str]:
    s = recipe.pruning.schedule
    if s.kind == "dense":
        return None, recipe.pruning.pattern
    return (s.final_sparsity if s.kind == "gmp" else s.sparsity), recipe.pruning.pattern


def _image_classes(task: Any) -> Tuple[int, int]:
    """(num_classes, in_channels) of an image task without loading its data (the check needs only shapes)."""
    if task.name in ("digits", "fashion_mnist"):
        return 10, 1
    if task.num_classes is not None:
        return task.num_classes, 3
    if task.name == "synthetic":
        return 1000, 3
    train = Path(task.data_dir or "", "train")
    try:
        classes = [p for p in train.iterdir() if p.is_dir()]
    except OSError:
        classes = []
    if not classes:
        raise ConfigError("task.num_classes", f"is not set and {train} has no class folders to count",
                          "set task.num_classes in the recipe (it sizes the classifier)")
    return len(classes), 3


def _recipe(path: Path, seq_len: Optional[int], image_size: Optional[int]) -> ModelSpec:
    from dstrain.recipe import load_recipe
    from dstrain.sparsity.registry import PrunableSelection, select_prunable
    from dstrain.tasks import validate_task_config

    recipe = load_recipe(path)
    task = validate_task_config(recipe.task)
    sparsity, pattern = _recipe_sparsity(recipe)
    notes = [f"recipe {recipe.name}: task {task.name}"]
    if task.name == "glue":
        from transformers import AutoConfig, AutoModelForSequenceClassification

        from dstrain.data.glue import get_task_spec
        from dstrain.tasks.glue import _check_model_dir

        config = AutoConfig.from_pretrained(_check_model_dir(task.model_dir, "task.model_dir"), local_files_only=True)
        config.num_labels = get_task_spec(task.glue_task).num_labels
        model = AutoModelForSequenceClassification.from_config(config)
        spec = _hf_spec(str(path), "recipe", model, seq_len or task.max_length, None, prunable=set(),
                        seq_len_field="--seq-len" if seq_len else "task.max_length")
    else:
        from dstrain.models import build_vision_model

        classes, channels = _image_classes(task)
        model = build_vision_model(task.arch, classes, channels, **task.arch_options)
        size = image_size or NATIVE_IMAGE_SIZE.get(task.name, task.image_size)
        spec = ModelSpec(str(path), "recipe", model.eval(), "image", f"{channels}x{size}x{size} images",
                         image_input(channels, size), set())
        notes.append(f"{task.arch}, {classes} classes, random weights")
    spec.prunable = _modules_of(select_prunable(spec.model, PrunableSelection.from_pruning(recipe.pruning)))
    spec.sparsity, spec.pattern = sparsity, pattern
    if sparsity is None:
        notes.append("the recipe is dense (no pruning)")
    spec.notes = notes + spec.notes
    return spec


def _export(path: Path, seq_len: Optional[int], image_size: Optional[int]) -> ModelSpec:
    import json

    from dstrain import export as ex
    from dstrain.run.export import load_exported_model
    from dstrain.sparsity.nm import is_nm, nm_eligible

    manifest = json.loads((path / ex.MANIFEST).read_text())
    task = manifest.get("task", {})
    model = load_exported_model(str(path), log=lambda _line: None)  # its 2:4 swap note is about CPU loading
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    zeros = {n: (int((m.weight == 0).sum()), m.weight.numel()) for n, m in layers}
    pruned = {n for n, (z, total) in zeros.items() if z >= EXPORT_PRUNED_MIN_ZEROS * total}
    sparsity = (sum(zeros[n][0] for n in pruned) / sum(zeros[n][1] for n in pruned)) if pruned else None
    modules = dict(layers)
    two_four = bool(pruned) and all(nm_eligible(modules[n].weight, (2, 4)) and is_nm(modules[n].weight.detach(), (2, 4))
                                    for n in pruned)
    if task.get("name") == "glue":
        spec = _hf_spec(str(path), "export", model, seq_len or task.get("max_length"), None, prunable=pruned,
                        seq_len_field="--seq-len" if seq_len else "the export's task.max_length")
    else:
        channels = next(m.in_channels for _, m in layers if isinstance(m, nn.Conv2d))
        size = image_size or NATIVE_IMAGE_SIZE.get(task.get("name"), task.get("image_size", DEFAULT_IMAGE_SIZE))
        spec = ModelSpec(str(path), "export", model.float().eval(), "image", f"{channels}x{size}x{size} images",
                         image_input(channels, size), pruned)
    spec.sparsity, spec.pattern = sparsity, "2:4" if two_four else "unstructured"
    spread = [zeros[n][0] / zeros[n][1] for n in pruned]
    spec.notes.append(f"export ({manifest.get('format')}) of {manifest.get('recipe')}: {len(pruned)} of {len(layers)} "
                      f"Linear/Conv2d weights pruned" + (f", {min(spread):.1%}-{max(spread):.1%} zeros each, "
                                                         f"{sparsity:.1%} overall" if pruned else ""))
    return spec


def resolve_model(arg: str, seq_len: Optional[int] = None, image_size: Optional[int] = None) -> ModelSpec:
    """The :class:`ModelSpec` for the command line's MODEL (see the module docstring for the order)."""
    from dstrain import export as ex

    if arg == BERT_BASE:
        return _bert_base(seq_len)
    path = Path(arg)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(ARG, f"recipe {arg} does not exist", f"check the path ({EXAMPLES})")
        return _recipe(path, seq_len, image_size)
    if path.is_dir():
        if (path / ex.MANIFEST).is_file():
            return _export(path, seq_len, image_size)
        if (path / "config.json").is_file():
            return _hf_folder(path, seq_len, image_size)
        raise ConfigError(ARG, f"folder {arg} has neither {ex.MANIFEST} (dstrain export) nor config.json "
                          "(save_pretrained)", f"pass a model folder ({EXAMPLES})")
    names = torchvision_names()
    if arg in names:
        return _torchvision(arg, image_size)
    if path.exists():
        raise ConfigError(ARG, f"{arg} is a file but not a recipe (.yaml)", f"pass {EXAMPLES}")
    if os.sep in arg or arg.startswith("."):
        raise ConfigError(ARG, f"{arg} does not exist", f"check the path ({EXAMPLES})")
    close = difflib.get_close_matches(arg, names + [BERT_BASE], n=3)
    hint = f"did you mean {' or '.join(close)}?" if close else EXAMPLES
    raise ConfigError(ARG, f"{arg!r} is not a torchvision classification model, {BERT_BASE!r}, a recipe or a "
                      "model folder", hint)
