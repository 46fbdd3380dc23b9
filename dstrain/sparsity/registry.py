"""Which parameters are prunable, their masks, and applying them.

Defaults follow the sparse-training literature: weights of Conv/Linear layers are
pruned; biases, norms and embeddings are not (they are tiny or sensitive), nor is
the first convolution (few weights, large effect on accuracy) or the final
classifier.  A recipe can override the choice with regex patterns on parameter
names.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Set

import torch
from torch import Tensor, nn

from dstrain.errors import ConfigError

PRUNABLE_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass
class PrunableSelection:
    """How to choose prunable parameters (mirrors the recipe's ``pruning`` section)."""

    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    exclude_first_conv: bool = True
    exclude_classifier: bool = True
    field_prefix: str = "pruning"

    @classmethod
    def from_pruning(cls, pruning: Any) -> "PrunableSelection":
        """The selection a recipe's ``pruning`` section describes."""
        return cls(tuple(pruning.include), tuple(pruning.exclude), pruning.exclude_first_conv,
                   pruning.exclude_classifier)


def _default_candidates(model: nn.Module, selection: PrunableSelection) -> List[str]:
    modules = [(name, m) for name, m in model.named_modules() if isinstance(m, PRUNABLE_MODULES)]
    skip = set()
    convs = [name for name, m in modules if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    linears = [name for name, m in modules if isinstance(m, nn.Linear)]
    if selection.exclude_first_conv and convs:
        skip.add(convs[0])
    if selection.exclude_classifier and linears:
        skip.add(linears[-1])
    return [f"{name}.weight" if name else "weight" for name, _ in modules if name not in skip]


def match_parameter_names(names: Sequence[str], patterns: Sequence[str], field: str) -> Set[str]:
    """Names matched by any of ``patterns`` (regex search).

    Each pattern must compile and match at least one name: a recipe pattern that
    matches nothing is almost always a typo, so it stops the run naming ``field[i]``.
    """
    matched: Set[str] = set()
    for i, pattern in enumerate(patterns):
        regex = _compile(pattern, f"{field}[{i}]")
        hits = {n for n in names if regex.search(n)}
        if not hits:
            raise ConfigError(f"{field}[{i}]", f"pattern {pattern!r} matches no parameter of the model",
                              f"use a regex over names such as {_examples(names)}")
        matched |= hits
    return matched


def select_prunable(model: nn.Module, selection: PrunableSelection) -> Dict[str, nn.Parameter]:
    """Names -> parameters to prune, in ``named_parameters`` order (the tie-break order)."""
    params = dict(model.named_parameters())
    prefix = selection.field_prefix
    if selection.include:
        chosen = match_parameter_names(list(params), selection.include, f"{prefix}.include")
    else:
        chosen = set(_default_candidates(model, selection))
    chosen -= match_parameter_names(list(params), selection.exclude, f"{prefix}.exclude")
    selected = {n: p for n, p in params.items() if n in chosen}
    if not selected:
        raise ConfigError(f"{prefix}.include",
                          "no prunable parameter is left after include/exclude",
                          "widen pruning.include or narrow pruning.exclude")
    return selected


def _compile(pattern: str, field_name: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as err:
        raise ConfigError(field_name, f"{pattern!r} is not a valid regex ({err})", "fix the pattern") from None


def _examples(names: Sequence[str]) -> str:
    return ", ".join(repr(n) for n in names[:3]) + (", ..." if len(names) > 3 else "")


class MaskRegistry:
    """One bool mask per prunable parameter, on the parameter's device.

    The registry is the single source of truth for masks: the model's weights are
    multiplied by them, the optimizer looks them up per parameter (:meth:`mask_for`),
    and checkpoints save them by parameter name.
    """

    def __init__(self, model: nn.Module, selection: Optional[PrunableSelection] = None) -> None:
        self.model = model
        self.selection = selection or PrunableSelection()
        self.params: Dict[str, nn.Parameter] = select_prunable(model, self.selection)
        self.masks: Dict[str, Tensor] = {
            name: torch.ones_like(p, dtype=torch.bool) for name, p in self.params.items()
        }
        self._by_param: Dict[int, Tensor] = {}
        self._reindex()

    def _reindex(self) -> None:
        self._by_param = {id(self.params[n]): m for n, m in self.masks.items()}

    def follow_param_devices(self) -> None:
        """Move masks to their parameters' devices (after a framework moved the model)."""
        moved = False
        for name, mask in list(self.masks.items()):
            device = self.params[name].device
            if mask.device != device:
                self.masks[name] = mask.to(device)
                moved = True
        if moved:
            self._reindex()

    @torch.no_grad()
    def follow_param_layouts(self) -> None:
        """Give each mask its parameter's memory layout (after a channels-last conversion).

        Values are unchanged; a mask laid out like its weight lets the fused kernels
        step both as one flat array, and keeps the mask objects (and so every
        reference the optimizer holds) the same.
        """
        for name, mask in list(self.masks.items()):
            param = self.params[name]
            if mask.stride() != param.stride():
                self.masks[name] = torch.empty_like(param, dtype=torch.bool).copy_(mask)
        self._reindex()

    # --- lookups -----------------------------------------------------------------
    def mask_for(self, param: Tensor) -> Optional[Tensor]:
        """Mask of a model parameter, or None if it is dense."""
        return self._by_param.get(id(param))

    def names(self) -> List[str]:
        return list(self.params)

    @property
    def numel(self) -> int:
        return sum(p.numel() for p in self.params.values())

    # --- mask installation ------------------------------------------------------
    @torch.no_grad()
    def set_masks(self, new_masks: Sequence[Tensor]) -> float:
        """Install masks computed elsewhere (in :meth:`names` order), zero the pruned weights; returns the flip rate."""
        names = self.names()
        flips = sum(int((new != self.masks[n]).sum()) for n, new in zip(names, new_masks))
        for n, new in zip(names, new_masks):
            self.masks[n].copy_(new)
        self.apply()
        return flips / max(self.numel, 1)

    @torch.no_grad()
    def apply(self) -> None:
        """Zero pruned weights in the model."""
        for name, mask in self.masks.items():
            self.params[name].mul_(mask)

    # --- statistics --------------------------------------------------------------
    def mask_sparsity(self) -> float:
        pruned = sum(int((~m).sum()) for m in self.masks.values())
        return pruned / max(self.numel, 1)

    @torch.no_grad()
    def weight_sparsity(self) -> float:
        """Fraction of exact zeros in the prunable weights (what the model really holds)."""
        zeros = sum(int((p == 0).sum()) for p in self.params.values())
        return zeros / max(self.numel, 1)

    @torch.no_grad()
    def layer_sparsity(self) -> Dict[str, float]:
        return {n: float((p == 0).sum()) / p.numel() for n, p in self.params.items()}

    @torch.no_grad()
    def revived(self) -> int:
        """Pruned positions holding a non-zero weight: must always be 0 in a compressed phase."""
        return sum(int((self.params[n][~m] != 0).sum()) for n, m in self.masks.items())

    # --- persistence -------------------------------------------------------------
    def state_dict(self) -> Dict[str, Tensor]:
        return {n: m.detach().cpu().clone() for n, m in self.masks.items()}

    def load_state_dict(self, state: Dict[str, Tensor]) -> None:
        missing = set(self.masks) - set(state)
        extra = set(state) - set(self.masks)
        if missing or extra:
            raise ConfigError("checkpoint.masks",
                              f"mask names differ from the model's prunable parameters "
                              f"(missing {sorted(missing)[:3]}, unexpected {sorted(extra)[:3]})",
                              "resume with the same model and pruning.include/exclude as the checkpoint")
        for n, m in state.items():
            if m.shape != self.masks[n].shape:
                raise ConfigError("checkpoint.masks", f"mask {n!r} has shape {tuple(m.shape)}, "
                                  f"parameter has {tuple(self.masks[n].shape)}", "resume with the same model")
            self.masks[n].copy_(m.to(self.masks[n].device, torch.bool))
