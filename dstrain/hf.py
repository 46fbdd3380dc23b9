"""Hugging Face interop: export sparse models for plain ``transformers``, and run dstrain
sparsity inside an ordinary ``transformers.Trainer``.

Why: people evaluate and deploy BERT checkpoints with ``from_pretrained``; a sparse model
is only useful to them if it loads there with no dstrain import and with its zeros
intact. Conversely, some users already have HF ``Trainer`` scripts and want dstrain's
recipes without switching trainers — a callback is the least intrusive hook.
"""
from __future__ import annotations

import glob
import json
import os
from typing import Any, Dict, Mapping, Optional, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

__all__ = ["unwrap_model", "export_sparse_model", "count_zeros_in_safetensors", "RecipeController",
           "DstrainRecipeCallback"]

SPARSITY_REPORT = "dstrain_sparsity.json"


def unwrap_model(model: Any) -> nn.Module:
    """Strips DeepSpeed engine / DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    seen = 0
    while seen < 8:
        seen += 1
        if hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        elif hasattr(model, "module") and isinstance(model.module, nn.Module) and not hasattr(model, "save_pretrained"):
            model = model.module
        else:
            break
    return model


def count_zeros_in_safetensors(out_dir: str) -> Dict[str, int]:
    """Exact-zero count per tensor in every ``*.safetensors`` file of ``out_dir``."""
    from safetensors import safe_open

    files = sorted(glob.glob(os.path.join(out_dir, "*.safetensors")))
    if not files:
        raise ValueError(f"no *.safetensors files in {out_dir}")
    counts: Dict[str, int] = {}
    for f in files:
        with safe_open(f, framework="pt") as fh:
            for k in fh.keys():
                counts[k] = int((fh.get_tensor(k) == 0).sum())
    return counts


def export_sparse_model(
    model: nn.Module,
    out_dir: str,
    tokenizer: Optional[Any] = None,
    masks: Optional[Mapping[str, Tensor]] = None,
    verify: bool = True,
) -> Dict[str, float]:
    """Writes ``model`` with ``save_pretrained`` (safetensors) so ``from_pretrained`` in plain
    transformers loads it with every pruned weight exactly 0.

    ``masks`` (parameter name -> bool mask, True = kept) is applied first if given;
    normally the trainer has already applied them. With ``verify`` the written files are
    read back and each tensor's zero count compared with the model's, so a silent dtype
    cast or re-initialisation in the save path cannot go unnoticed.
    Returns per-parameter sparsity (fraction of zeros) for the weights that have any,
    also written to ``dstrain_sparsity.json`` next to the weights.
    """
    model = unwrap_model(model)
    if not hasattr(model, "save_pretrained"):
        raise ValueError(
            f"{type(model).__name__} has no save_pretrained; export_sparse_model takes a transformers "
            "PreTrainedModel (unwrap your own wrapper first)"
        )
    params = dict(model.named_parameters())
    if masks:
        unknown = [n for n in masks if n not in params]
        if unknown:
            raise ValueError(f"masks name parameters the model does not have: {unknown[:5]}")
        with torch.no_grad():
            for name, mask in masks.items():
                params[name].mul_(mask.to(device=params[name].device, dtype=params[name].dtype))

    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)  # transformers 5 writes safetensors only
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)

    with torch.no_grad():
        state = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
        zeros = {k: int((v == 0).sum()) for k, v in state.items()}
        sparsity = {k: zeros[k] / max(1, state[k].numel()) for k in state if zeros[k] > 0}
    if verify:
        written = count_zeros_in_safetensors(out_dir)
        mismatched = [k for k in written if k in zeros and written[k] != zeros[k]]
        if mismatched:
            raise RuntimeError(f"zeros changed while saving to {out_dir}: {mismatched[:5]}")
    with open(os.path.join(out_dir, SPARSITY_REPORT), "w") as f:
        json.dump({"sparsity": sparsity}, f, indent=1, sort_keys=True)
    return sparsity


@runtime_checkable
class RecipeController(Protocol):
    """What :class:`DstrainRecipeCallback` needs from dstrain's recipe/mask machinery."""

    def on_step_begin(self, step: int) -> None:
        """Before step ``step`` (0-based optimizer step): recompute masks if the recipe says so,
        set LR / masking phase."""

    def after_optimizer_step(self) -> None:
        """Re-apply masks to the weights after the optimizer moved them."""


def _callback_base() -> type:
    from transformers import TrainerCallback

    return TrainerCallback


class DstrainRecipeCallback(_callback_base()):  # type: ignore[misc]
    """Drives a dstrain recipe from inside ``transformers.Trainer``.

    Hook choice (transformers 5.24 ``Trainer._inner_training_loop``): ``on_step_begin``
    fires once per optimizer step, at its first micro-batch, with ``state.global_step``
    = number of optimizer steps already taken — the 0-based index of the step about to
    run. ``on_optimizer_step`` fires right after ``optimizer.step()`` and before
    ``zero_grad`` / the LR scheduler step, so masks are re-applied before the weights are
    seen by anything else (logging, eval, save).

    Pruned weights' AdamW moments are not touched here; pass a dstrain masked optimizer
    through ``Trainer(optimizers=(opt, sched))`` to keep them at zero too.
    """

    def __init__(self, controller: RecipeController) -> None:
        missing = [m for m in ("on_step_begin", "after_optimizer_step") if not callable(getattr(controller, m, None))]
        if missing:
            raise ValueError(f"controller {type(controller).__name__} lacks {missing}; see dstrain.hf.RecipeController")
        self.controller = controller

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.controller.on_step_begin(int(state.global_step))

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.controller.after_optimizer_step()
