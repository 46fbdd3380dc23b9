"""SparseGPT: layer-wise OBS pruning with weight reconstruction (Frantar & Alistarh 2023, IST-DASLab/sparsegpt).

For a Linear with weight W [out, in] and calibration inputs X [in, tokens], SparseGPT looks
for the pruned Ŵ that keeps ‖(W − Ŵ)X‖² small.  Every row is the same least-squares
problem with Hessian H = X Xᵀ (summed over all calibration tokens and ranks), dampened by
``percdamp`` × mean(diag H) on the diagonal.  Columns are processed left to right: pruning
w_rj (setting it to 0) is compensated by the Optimal Brain Surgeon update of the columns
to its right, δw_r,j: = −(w_rj / [H_F⁻¹]_jj) [H_F⁻¹]_j,j: with H_F the Hessian of the
columns not yet processed.  All those inverses come from one upper Cholesky factor U of
H⁻¹: row j of U is [H_F⁻¹]_j,j: / sqrt([H_F⁻¹]_jj), so the update is −(w_rj / U_jj) U_j,j:.
Columns go in lazy blocks of ``blocksize``: inside a block the updates are applied column
by column, to the rest of the layer once per block.  The mask is chosen adaptively at the
start of each block from the weights as updated so far, by the OBS error w² / U_jj²:
the lowest ones of the block are pruned (for N:M, the lowest M − N of every group of M
columns, chosen when the group starts).  Dead inputs (diag H = 0) get H_jj = 1 and their
weights are zeroed first, as the reference does.

Counts are exact: block b prunes round(s·n_≤b) − round(s·n_<b) weights (n counting the
weights up to and before it), so the layer prunes round(s·numel); ties go to the lowest
(row, column) index.  The arithmetic is :func:`sparsegpt_prune` (any float dtype: the
tests run it in float64 against an explicit OBS); the calibration pass is
:class:`~dstrain.sparsity.calibration.CalibratedCriterion`'s.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Optional, Tuple

import torch
from pydantic import Field
from torch import Tensor, nn

from dstrain.errors import ConfigError
from dstrain.sparsity.calibration import CalibratedCriterion, CalibrationSettings, InputStat
from dstrain.sparsity.magnitude import num_to_prune
from dstrain.sparsity.nm import NMPattern, nm_mask
from dstrain.sparsity.registry import MaskRegistry

__all__ = ["SparseGPTSettings", "SparseGPTCriterion", "Hessian", "sparsegpt_prune", "damped_inverse_factor"]


class SparseGPTSettings(CalibrationSettings):
    """``pruning.sparsegpt`` (defaults: IST-DASLab/sparsegpt llama.py: nsamples 128, percdamp 0.01, blocksize 128)."""

    percdamp: float = Field(default=0.01, gt=0, le=1, description="dampening: this fraction of mean(diag H) "
                            "is added to the diagonal")
    blocksize: int = Field(default=128, ge=1, le=1 << 16, description="columns per lazy block (the mask is "
                           "chosen per block)")


class Hessian(InputStat):
    """Σ x xᵀ over tokens, float32 as in the reference (the scale cancels in every use)."""

    def __init__(self, linear: nn.Linear) -> None:
        n = linear.in_features
        self.h = torch.zeros(n, n, dtype=torch.float32, device=linear.weight.device)

    def add(self, x: Tensor) -> None:
        x = x.float()
        self.h.addmm_(x.t(), x)

    def tensor(self) -> Tensor:
        return self.h


def damped_inverse_factor(hessian: Tensor, percdamp: float) -> Tuple[Tensor, Tensor]:
    """(U, dead): the upper Cholesky factor of (H + λI)⁻¹, λ = percdamp · mean(diag H); dead inputs get H_jj = 1."""
    h = hessian.clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1
    idx = torch.arange(h.shape[0], device=h.device)
    h[idx, idx] += percdamp * torch.mean(torch.diagonal(h))
    h = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return torch.linalg.cholesky(h, upper=True), dead


def _lowest(scores: Tensor, k: int) -> Tensor:
    """Bool mask of the ``k`` lowest entries of ``scores`` (ties: lowest flat index first)."""
    pruned = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        pruned[torch.sort(scores.reshape(-1), stable=True).indices[:k]] = True
    return pruned.view(scores.shape)


@contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """One intra-op thread for the column loop on the CPU: it is thousands of tiny ops, for which a
    second OpenMP thread only adds synchronisation (on a loaded 2-core machine 40x slower: 8 s instead
    of 0.2 s for a 576 x 576 layer)."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.no_grad()
def sparsegpt_prune(weight: Tensor, hessian: Tensor, sparsity: float, pattern: Optional[NMPattern] = None,
                    blocksize: int = 128, percdamp: float = 0.01) -> Tuple[Tensor, Tensor, float]:
    """(new weight, keep-mask, OBS error Σ (w − q)² / (2 U_jj²)) for ``weight`` [out, in] and ``hessian`` [in, in].

    Computed in the dtype of ``weight`` (the Hessian is cast to it).
    """
    if pattern is not None and blocksize % pattern[1]:
        raise ValueError(f"blocksize {blocksize} is not a multiple of M={pattern[1]}")
    with _one_cpu_thread(weight.device):
        return _prune(weight, hessian, sparsity, pattern, blocksize, percdamp)


def _prune(weight: Tensor, hessian: Tensor, sparsity: float, pattern: Optional[NMPattern], blocksize: int,
           percdamp: float) -> Tuple[Tensor, Tensor, float]:
    rows, cols = weight.shape
    w = weight.clone()
    u, dead = damped_inverse_factor(hessian.to(w.dtype), percdamp)
    w[:, dead] = 0
    pruned = torch.zeros_like(w, dtype=torch.bool)
    error = torch.zeros((), dtype=torch.float64, device=w.device)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1 = w[:, i1:i2].clone()
        u1 = u[i1:i2, i1:i2]
        d = torch.diagonal(u1)
        q1 = torch.zeros_like(w1)
        err1 = torch.zeros_like(w1)
        if pattern is None:
            k = num_to_prune(rows * i2, sparsity) - num_to_prune(rows * i1, sparsity)
            p1 = _lowest(w1.pow(2) / d.pow(2).unsqueeze(0), k)
        else:
            p1 = torch.zeros_like(w1, dtype=torch.bool)
        m = pattern[1] if pattern is not None else 0
        for i in range(i2 - i1):
            if pattern is not None and i % m == 0:
                scores = w1[:, i:i + m].pow(2) / d[i:i + m].pow(2).unsqueeze(0)
                p1[:, i:i + m] = ~nm_mask(scores, pattern, scores=scores)
            col = w1[:, i]
            q = col.masked_fill(p1[:, i], 0)
            q1[:, i] = q
            e = (col - q) / d[i]
            error += (e.double().pow(2).sum() / 2)
            w1[:, i:] -= e.unsqueeze(1) * u1[i, i:].unsqueeze(0)
            err1[:, i] = e
        w[:, i1:i2] = q1
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
        pruned[:, i1:i2] = p1
    return w, ~pruned, float(error)


class SparseGPTCriterion(CalibratedCriterion):
    """SparseGPT pruning of the decoder layers' Linears (mask and weight reconstruction), one-shot or per update."""

    name = "sparsegpt"
    Settings = SparseGPTSettings
    selection = "per column block, with the OBS weight update"

    def __init__(self, pruning: Any, registry: MaskRegistry, settings: Optional[SparseGPTSettings] = None) -> None:
        super().__init__(pruning, registry, settings)
        if self.nm is not None and self.settings.blocksize % self.nm[1]:
            raise ConfigError("pruning.sparsegpt.blocksize", f"{self.settings.blocksize} is not a multiple of "
                              f"M = {self.nm[1]} (pattern {self.pruning.pattern}): an N:M group would straddle blocks",
                              f"use a multiple of {self.nm[1]}, e.g. 128")
        self.errors: dict = {}

    def new_stat(self, linear: nn.Linear) -> InputStat:
        return Hessian(linear)

    def prune_linear(self, name: str, weight: Tensor, stat: Tensor, sparsity: float) -> Tuple[Tensor, Tensor]:
        new, mask, error = sparsegpt_prune(weight, stat, sparsity, self.nm, self.settings.blocksize,
                                           self.settings.percdamp)
        self.errors[name] = error
        return mask, new
