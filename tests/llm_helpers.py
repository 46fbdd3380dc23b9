"""Shared pieces of the causal-LM tests: a tiny random Llama and a data-driven criterion wired by hand."""
from __future__ import annotations

import copy
from typing import Any, Dict, Optional

import torch

from dstrain.recipe.spec import PruningSpec
from dstrain.sparsity.criterion import DataHooks, build_criterion
from dstrain.sparsity.registry import MaskRegistry, PrunableSelection


def tiny_llama(seed: int = 0):
    from dstrain.testing.tiny_llama import make_tiny_llama

    model, tokenizer = make_tiny_llama(None, seed=seed)
    return model.float().eval(), tokenizer


def calibration_ids(samples: int = 6, seq_len: int = 24, vocab: int = 257, seed: int = 0) -> torch.Tensor:
    return torch.randint(vocab, (samples, seq_len), generator=torch.Generator().manual_seed(seed))


def criterion_for(model: torch.nn.Module, name: str, ids: torch.Tensor, pattern: str = "unstructured",
                  settings: Optional[Dict[str, Any]] = None):
    """``name``'s criterion over ``model``'s default prunable weights, attached to fixed calibration ids."""
    pruning = PruningSpec.model_validate({"criterion": name, "pattern": pattern, name: dict(settings or {}),
                                          "schedule": {"kind": "oneshot", "sparsity": 0.5, "at": 0}})
    registry = MaskRegistry(model, PrunableSelection.from_pruning(pruning))
    criterion = build_criterion(pruning, registry)

    def calibration(samples, seq_len, seed, rank=0, world=1, field="calibration"):
        return ids[rank::world]

    criterion.attach(DataHooks(model, loss=None, batches=None, calibration=calibration))
    return criterion, registry


def linear_inputs(model: torch.nn.Module, layer: int, ids: torch.Tensor) -> Dict[str, torch.Tensor]:
    """The inputs [tokens, in] of every Linear of decoder layer ``layer`` in a plain forward of ``model``."""
    seen: Dict[str, torch.Tensor] = {}
    handles = []
    for name, module in model.model.layers[layer].named_modules():
        if isinstance(module, torch.nn.Linear):
            def hook(_m, args, _out, name=name):
                seen[name] = args[0].detach().reshape(-1, args[0].shape[-1]).clone()
            handles.append(module.register_forward_hook(hook))
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    for h in handles:
        h.remove()
    return seen


def clone(model):
    return copy.deepcopy(model)
