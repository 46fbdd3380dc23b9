"""N:M semi-structured masks (e.g. 2:4): in every group of M consecutive weights along the
reduction dimension, keep the N largest by magnitude.

Why this layout: sparse tensor cores (Ampere and later; cuSPARSELt, CUTLASS,
``torch.sparse.to_sparse_semi_structured``) multiply ``x @ W.T`` with W stored row-major,
so a group is M consecutive input features of one output row of a Linear weight
``[out, in]``.  A convolution runs as an implicit GEMM over the channels-last (KRSC)
weight ``[out, kh, kw, in]``, so a conv group is M consecutive *input channels* at one
(output channel, kh, kw) position — the layout NVIDIA ASP and the official AC/DC
``MagnitudeNMPruner`` use (``weight.permute(0, 2, 3, 1)``).  A group never straddles a
kernel position or an output row: a layer whose per-row reduction length (Linear
``in_features``, Conv ``in_channels / groups``) is not a multiple of M cannot be N:M
and stays dense (:func:`nm_eligible`; the magnitude criterion lists such layers in the run log).

Ties are exact and deterministic: the M - N smallest magnitudes of a group are pruned,
equal magnitudes pruned lowest index first (a stable sort), as the unstructured
criteria prune the earliest equal elements first.  The mask is a pure function of the
weight values, so every data-parallel rank computes the same one with no communication.

This module is pure mask arithmetic; :class:`~dstrain.sparsity.magnitude.MagnitudeCriterion`
uses it for ``pattern: "N:M"`` recipes.
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

NMPattern = Tuple[int, int]

_PATTERN = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_pattern(text: str) -> Optional[NMPattern]:
    """``"unstructured"`` -> None; ``"N:M"`` -> (N, M) with 0 < N < M; anything else: ValueError."""
    if text == "unstructured":
        return None
    match = _PATTERN.match(text)
    if not match:
        raise ValueError(f"{text!r} is neither 'unstructured' nor 'N:M' (e.g. \"2:4\")")
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise ValueError(f"{text!r} needs 0 < N < M (N weights kept in every group of M), e.g. \"2:4\"")
    return n, m


def pattern_sparsity(pattern: NMPattern) -> float:
    """Fraction of zeros an N:M layer has: 1 - N/M (0.5 for 2:4)."""
    n, m = pattern
    return 1.0 - n / m


def reduction_length(weight: Tensor) -> int:
    """Length of the dimension the groups run along: Linear in_features, Conv in_channels/groups."""
    return int(weight.shape[1]) if weight.dim() >= 2 else int(weight.numel())


def nm_eligible(weight: Tensor, pattern: NMPattern) -> bool:
    """Whether ``weight`` can be N:M: 2-D or more, and its reduction length a multiple of M."""
    return shape_nm_eligible(weight.shape, pattern)


def shape_nm_eligible(shape: Sequence[int], pattern: NMPattern) -> bool:
    """:func:`nm_eligible` from a shape alone (a ZeRO-3 partition's parameter is flat; its shape is known)."""
    return len(shape) >= 2 and int(shape[1]) % pattern[1] == 0


def _to_groups_layout(t: Tensor) -> Tensor:
    """[out, in, *k] -> [out, *k, in]: the input dimension last (identity for Linear)."""
    if t.dim() == 2:
        return t
    return t.permute(0, *range(2, t.dim()), 1)


def _from_groups_layout(t: Tensor) -> Tensor:
    """Inverse of :func:`_to_groups_layout`."""
    if t.dim() == 2:
        return t
    return t.permute(0, t.dim() - 1, *range(1, t.dim() - 1))


def group_view(t: Tensor, m: int) -> Tensor:
    """``t`` reshaped to [groups, M] in the sparse-kernel layout (a copy when not already contiguous there)."""
    return _to_groups_layout(t).reshape(-1, m)


@torch.no_grad()
def nm_mask(weight: Tensor, pattern: NMPattern, scores: Optional[Tensor] = None) -> Tensor:
    """Bool mask (True = kept) with exactly N kept per group of M, in ``weight``'s shape and memory format.

    ``scores`` (same shape, larger = more important) replaces |weight| as the criterion.
    """
    n, m = pattern
    if not nm_eligible(weight, pattern):
        raise ValueError(f"weight of shape {tuple(weight.shape)} has reduction length "
                         f"{reduction_length(weight)}, not a multiple of M={m}")
    score = (weight.detach().abs() if scores is None else scores.detach()).float()
    groups = group_view(score, m)
    # stable ascending sort: the M-N smallest are pruned, equal scores lowest index first
    order = torch.sort(groups, dim=1, stable=True).indices[:, : m - n]
    keep = torch.ones_like(groups, dtype=torch.bool)
    keep.scatter_(1, order, False)
    logical = _from_groups_layout(keep.reshape(_to_groups_layout(score).shape))
    out = torch.empty_like(weight, dtype=torch.bool)  # keeps channels_last if the weight has it
    out.copy_(logical)
    return out


def nm_group_counts(tensor: Tensor, m: int) -> Tensor:
    """Nonzeros (or True entries of a mask) in every group of M, in the sparse-kernel layout."""
    return (group_view(tensor, m) != 0).sum(dim=1)


def is_nm(tensor: Tensor, pattern: NMPattern, exact: bool = True) -> bool:
    """Every group of M holds exactly N (``exact``) or at most N nonzeros."""
    counts = nm_group_counts(tensor, pattern[1])
    return bool((counts == pattern[0]).all()) if exact else bool((counts <= pattern[0]).all())




@torch.no_grad()
def nm_masks(tensors: Sequence[Tensor], sparsity: float, pattern: NMPattern) -> List[Tensor]:
    """One mask per tensor: N:M where eligible, all-True elsewhere, all-True when ``sparsity`` is 0.

    ``sparsity`` is the schedule's target: 0 means a dense phase (no pruning); any other
    value means "the pattern" (the recipe checks it equals 1 - N/M).
    """
    out = []
    for t in tensors:
        if sparsity > 0 and nm_eligible(t, pattern):
            out.append(nm_mask(t, pattern))
        else:
            out.append(torch.ones_like(t, dtype=torch.bool))
    return out


def dense_layers(registry, pattern: NMPattern) -> Dict[str, Tuple[int, ...]]:
    """Prunable parameters an N:M pattern leaves dense (name -> shape), for the run log."""
    shapes = getattr(registry, "full_shapes", None) or {n: p.shape for n, p in registry.params.items()}
    return {n: tuple(s) for n, s in shapes.items() if not shape_nm_eligible(s, pattern)}


@torch.no_grad()
def registry_is_nm(registry, pattern: NMPattern) -> bool:
    """Every N:M-eligible prunable weight holds exactly N nonzeros in every group of M."""
    return all(is_nm(p.detach(), pattern) for p in registry.params.values() if nm_eligible(p, pattern))
