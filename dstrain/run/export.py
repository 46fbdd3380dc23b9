"""``dstrain export RUN_OR_CHECKPOINT --format F --out DIR``: a trained run's model in a deployable format,
and :func:`load_exported_model`, which rebuilds the model from what the command wrote.

This module sits above the tasks and the recipe (it rebuilds the architecture a run trained);
the formats themselves live in :mod:`dstrain.export`, below everything else.

The weights come from a complete dstrain checkpoint (DeepSpeed's ``mp_rank_00_model_states.pt``
holds the full model under ZeRO 0/1/2, and the run's recipe in its client state), so a run
folder, with no data and no GPU, is all the command needs.  Image architectures are rebuilt
from the recipe's ``task.arch`` / ``arch_options``, their class count and input channels read
from the checkpoint's shapes (no dataset scan); GLUE and causal-LM models from the config of
the recipe's ``task`` model, as the run built them.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from dstrain import export as ex
from dstrain.errors import ConfigError
from dstrain.run.checkpoints import MARKER, complete_checkpoints

MODEL_STATES = "mp_rank_00_model_states.pt"
ARG = "RUN_OR_CHECKPOINT"
HF_TASKS = {"glue": "AutoModelForSequenceClassification", "causal_lm": "AutoModelForCausalLM"}
"""Tasks that train a transformers model -> the Auto class that rebuilds it."""


def resolve_checkpoint(path: str) -> Path:
    """A checkpoint folder as given, or the newest complete checkpoint of a run folder."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(ARG, f"{p} does not exist", "pass a run folder (OUTPUT_DIR/<recipe name>) or one of its "
                          "checkpoints/stepNNNNNNNNN folders")
    if (p / MARKER).is_file():
        return p
    found = complete_checkpoints(p / "checkpoints")
    if not found:
        raise ConfigError(ARG, f"{p} is neither a complete dstrain checkpoint nor a run folder with one "
                          f"(no {MARKER} in it or under {p / 'checkpoints'})",
                          "pass a run folder that finished at least one checkpoint, or a checkpoints/step* folder")
    return found[-1][1]


def read_checkpoint(checkpoint: Path) -> Tuple[Dict[str, Tensor], Dict[str, Any]]:
    """(model state dict, recipe dict) of a dstrain checkpoint."""
    files = sorted(checkpoint.glob(f"*{MODEL_STATES}")) or sorted(checkpoint.glob("*/" + MODEL_STATES))
    if not files:
        raise ConfigError(ARG, f"{checkpoint} has no {MODEL_STATES}", "pass a checkpoint written by dstrain train")
    # DeepSpeed pickles its own objects into this file: a local file the run wrote, hence weights_only=False
    data = torch.load(files[0], map_location="cpu", weights_only=False)
    if "module" not in data or "recipe" not in data:
        raise ConfigError(ARG, f"{files[0]} lacks the model or the recipe", "pass a checkpoint written by dstrain train")
    if _zero_stage(checkpoint) == 3:  # the model file holds placeholders: every rank kept only its partition
        return _whole_from_partitions(checkpoint), dict(data["recipe"])
    return dict(data["module"]), dict(data["recipe"])


def _zero_stage(checkpoint: Path) -> int:
    try:
        return int(json.loads((checkpoint / MARKER).read_text()).get("zero_stage", 0))
    except (OSError, ValueError):
        return 0


def _whole_from_partitions(checkpoint: Path) -> Dict[str, Tensor]:
    """The whole model of a ZeRO-3 checkpoint, joined from every rank's fp32 partition by DeepSpeed's own
    ``zero_to_fp32`` (pruned weights are exact zeros there: the masked step wrote them)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint.parent), tag=checkpoint.name)
    return {k: v.contiguous() for k, v in state.items()}


def _image_shapes(state: Dict[str, Tensor]) -> Tuple[int, int]:
    """(num_classes, in_channels) from the last Linear weight and the first convolution."""
    mats = [t for t in state.values() if t.dim() == 2]
    convs = [t for t in state.values() if t.dim() == 4]
    if not mats or not convs:
        raise ConfigError(ARG, "checkpoint has no classifier or no convolution",
                          "export an image, GLUE or causal_lm run")
    return int(mats[-1].shape[0]), int(convs[0].shape[1])


def build_model(task: Dict[str, Any], state: Dict[str, Tensor], config_dir: Optional[str] = None) -> Tuple[nn.Module, Any]:
    """(model with ``state`` loaded, tokenizer or None) for a recipe's ``task`` section."""
    if task.get("name") in HF_TASKS:
        import transformers

        from dstrain.tasks import build_task

        if config_dir is None:
            hf_task = build_task(task)
            config = hf_task.build_model().config
            tokenizer = hf_task.tokenizer
        else:
            config = transformers.AutoConfig.from_pretrained(config_dir, local_files_only=True)
            tokenizer = None
        model = getattr(transformers, HF_TASKS[task["name"]]).from_config(config)
    else:
        from dstrain.models import build_vision_model

        num_classes, in_channels = _image_shapes(state)
        model = build_vision_model(task.get("arch", "small_resnet"), num_classes, in_channels,
                                   **task.get("arch_options", {}))
        tokenizer = None
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ConfigError(ARG, f"checkpoint does not fit the recipe's model (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]})", "export with the code version that trained it")
    return model.float().eval(), tokenizer


def export_checkpoint(path: str, fmt: str, out: str, log=print) -> Dict[str, Any]:
    """Write the model of ``path`` (run or checkpoint folder) to ``out`` in format ``fmt``; returns the manifest."""
    if fmt not in ex.FORMATS:
        raise ConfigError("--format", f"{fmt!r} is not a format", f"use one of {', '.join(ex.FORMATS)}")
    checkpoint = resolve_checkpoint(path)
    state, recipe = read_checkpoint(checkpoint)
    task = recipe.get("task", {})
    is_hf = task.get("name") in HF_TASKS
    if fmt == "hf" and not is_hf:
        raise ConfigError("--format", f"hf is for transformers models; this run's task is {task.get('name')!r}",
                          "use --format torchvision or compressed")
    if fmt == "torchvision" and is_hf:
        raise ConfigError("--format", "torchvision is for image models; this run fine-tuned a transformers model",
                          "use --format hf or compressed")
    model, tokenizer = build_model(task, state)
    if fmt == "semi-structured" and not ex.two_four_linears(model):
        raise ConfigError("--format", "semi-structured needs Linear weights that are exactly 2:4; this model has none",
                          'train with pruning.pattern: "2:4" (and a Linear layer it prunes), or use --format compressed')
    os.makedirs(out, exist_ok=True)
    dense = model.state_dict()
    manifest: Dict[str, Any] = {"format": fmt, "source": str(checkpoint), "recipe": recipe.get("name"),
                                "task": task, "dense_bytes": ex.dense_bytes(dense)}
    if fmt == "hf":
        ex.export_sparse_model(model, out, tokenizer=tokenizer)
    elif fmt == "torchvision":
        torch.save(dense, os.path.join(out, ex.TORCHVISION_FILE))
        manifest["file"] = ex.TORCHVISION_FILE
    else:
        ex.save_compressed(dense, os.path.join(out, ex.COMPRESSED_FILE))
        manifest["file"] = ex.COMPRESSED_FILE
        if is_hf:  # the architecture and tokenizer travel with the weights
            model.config.save_pretrained(out)
            if tokenizer is not None:
                tokenizer.save_pretrained(out)
        if fmt == "semi-structured":
            manifest["two_four_linears"] = [n for n, _ in ex.two_four_linears(model)]
    manifest["bytes_on_disk"] = ex.file_bytes(out)
    Path(out, ex.MANIFEST).write_text(json.dumps(manifest, indent=1))
    log(f"exported {checkpoint} as {fmt} to {out}: {manifest['bytes_on_disk'] / 1e6:.2f} MB on disk "
        f"(dense tensors: {manifest['dense_bytes'] / 1e6:.2f} MB)")
    return manifest


def load_exported_model(out: str, device: Any = "cpu", dtype: Optional[torch.dtype] = None, log=print) -> nn.Module:
    """The model ``dstrain export`` wrote to ``out``, rebuilt dense (eval mode).

    A ``semi-structured`` export additionally swaps its 2:4 Linear weights to
    ``torch.sparse.to_sparse_semi_structured`` (``dtype`` default float16) on a CUDA GPU with sparse
    tensor cores; elsewhere it logs why not and keeps them dense.
    """
    manifest_path = Path(out, ex.MANIFEST)
    if not manifest_path.is_file():
        raise ConfigError("export folder", f"{out} has no {ex.MANIFEST}", "pass a folder written by dstrain export")
    manifest = json.loads(manifest_path.read_text())
    fmt, task = manifest["format"], manifest["task"]
    if fmt == "hf":
        import transformers

        model = getattr(transformers, HF_TASKS[task["name"]]).from_pretrained(out, local_files_only=True)
    else:
        path = os.path.join(out, manifest["file"])
        state = torch.load(path, map_location="cpu") if fmt == "torchvision" else ex.load_compressed(path)
        model, _ = build_model(task, state, config_dir=out if task.get("name") in HF_TASKS else None)
    model.eval()
    if fmt == "semi-structured":
        ex.swap_to_semi_structured(model, device, dtype or torch.float16, log=log)
        return model
    return model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
