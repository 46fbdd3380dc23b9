"""Wanda: prune by weight magnitude times input activation norm (Sun et al. 2023, locuslab/wanda).

The score of weight W_ij of a Linear is |W_ij| · ‖X_j‖₂, where ‖X_j‖₂ is the norm of input
feature j over every calibration token (all ranks): a small weight on a feature that is
large in practice (LLMs have a few such outlier features) outweighs a larger weight on a
quiet one.  Weights compete within each output row (Wanda's "per output" comparison
group): every row of a layer loses the same share, and the scores of different layers
never meet.  For ``pattern: "N:M"`` the group is M consecutive inputs of one row, as
``dstrain.sparsity.nm`` lays N:M out.  No weight is changed except by pruning.

The calibration pass (layer inputs from the already-pruned layers below, all-reduce of
the norms) is :class:`~dstrain.sparsity.calibration.CalibratedCriterion`'s.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from dstrain.sparsity.calibration import CalibratedCriterion, CalibrationSettings, InputStat, per_row_mask
from dstrain.sparsity.magnitude import num_to_prune
from dstrain.sparsity.nm import NMPattern, nm_mask

__all__ = ["WandaSettings", "WandaCriterion", "wanda_scores", "wanda_mask", "SquaredNorms"]


class WandaSettings(CalibrationSettings):
    """``pruning.wanda``: the calibration data (nsamples 128 and seed 0 are locuslab/wanda main.py's defaults)."""


class SquaredNorms(InputStat):
    """Σ over tokens of x_j² for every input feature j (float64, so sums over ranks and batches do not drift)."""

    def __init__(self, linear: nn.Linear) -> None:
        self.sq = torch.zeros(linear.in_features, dtype=torch.float64, device=linear.weight.device)

    def add(self, x: Tensor) -> None:
        self.sq += x.double().pow(2).sum(dim=0)

    def tensor(self) -> Tensor:
        return self.sq


def wanda_scores(weight: Tensor, squared_norms: Tensor) -> Tensor:
    """|W_ij| · ‖X_j‖₂ for ``weight`` [out, in] and ``squared_norms`` [in] (Σ x_j² over the calibration tokens)."""
    return weight.abs().float() * squared_norms.sqrt().to(weight.device, torch.float32).unsqueeze(0)


def wanda_mask(weight: Tensor, squared_norms: Tensor, sparsity: float, pattern: Optional[NMPattern] = None) -> Tensor:
    """Keep-mask of ``weight``: the lowest scores pruned within each output row (or each N:M group)."""
    scores = wanda_scores(weight, squared_norms)
    if pattern is not None:
        return nm_mask(weight, pattern, scores=scores)
    return per_row_mask(scores, num_to_prune(weight.numel(), sparsity))


class WandaCriterion(CalibratedCriterion):
    """Wanda pruning of the decoder layers' Linears, one-shot or at each update of a schedule."""

    name = "wanda"
    Settings = WandaSettings
    selection = "per output row"

    def new_stat(self, linear: nn.Linear) -> InputStat:
        return SquaredNorms(linear)

    def prune_linear(self, name: str, weight: Tensor, stat: Tensor, sparsity: float) -> Tuple[Tensor, None]:
        return wanda_mask(weight, stat, sparsity, self.nm), None
