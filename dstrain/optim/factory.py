"""The recipe's optimizer: parameter groups with their weight-decay rule, and the masked optimizer class.

Why next to the optimizers: the DeepSpeed trainer and the Hugging Face Trainer path
(:mod:`dstrain.hf`) build the same optimizer from the same recipe section.
"""
from __future__ import annotations

from typing import Any, Dict, List

import torch
from torch import nn

from dstrain.optim.adamw import MaskedAdamW
from dstrain.optim.sgd import MaskedSGD
from dstrain.sparsity.registry import match_parameter_names


def parameter_groups(model: nn.Module, recipe: Any) -> List[Dict[str, Any]]:
    """One group with the recipe's weight decay, and one without for ``optimizer.no_weight_decay`` matches."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    exempt = match_parameter_names([n for n, _ in named], recipe.optimizer.no_weight_decay,
                                   "optimizer.no_weight_decay")
    groups = [{"params": [p for n, p in named if n not in exempt]},
              {"params": [p for n, p in named if n in exempt], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, recipe: Any) -> torch.optim.Optimizer:
    """The masked optimizer the recipe's ``optimizer`` section names, over :func:`parameter_groups`."""
    spec = recipe.optimizer
    groups = parameter_groups(model, recipe)
    if spec.name == "sgd":
        return MaskedSGD(groups, lr=spec.lr, momentum=spec.momentum, dampening=spec.dampening,
                         weight_decay=spec.weight_decay, nesterov=spec.nesterov, backend=spec.backend)
    return MaskedAdamW(groups, lr=spec.lr, betas=spec.betas, eps=spec.eps,
                       weight_decay=spec.weight_decay, backend=spec.backend)
