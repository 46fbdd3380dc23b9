"""Magnitude pruning that hits the target sparsity exactly and breaks ties deterministically.

A mask keeps ``True`` for surviving weights.  Exactness matters because the
recipe's sparsity is a promise (a 90% model must have 90% zeros, not 89.7%), and
determinism matters because every data-parallel rank must compute the same mask
without communicating.  Ties at the threshold are broken by (tensor order, flat
index): the earliest equal elements are pruned first.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch import Tensor

from dstrain.sparsity.criterion import Criterion
from dstrain.sparsity.nm import (
    dense_layers,
    is_nm,
    nm_mask,
    nm_masks,
    parse_pattern,
    registry_is_nm,
    shape_nm_eligible,
)
from dstrain.sparsity.registry import MaskRegistry
from dstrain.sparsity.zero3 import local_tie_break

KthSelector = Callable[[Sequence[Tensor], int], float]
"""Returns the exact k-th smallest |w| (1-based) over all elements of the given tensors."""


def torch_kth_smallest_abs(tensors: Sequence[Tensor], k: int) -> float:
    """Reference selector: kthvalue over the concatenated magnitudes."""
    flat = torch.cat([t.detach().reshape(-1).abs().float() for t in tensors])
    if not 1 <= k <= flat.numel():
        raise ValueError(f"k={k} must be in [1, {flat.numel()}]")
    return float(torch.kthvalue(flat.cpu(), k).values)


def default_selector(tensors: Sequence[Tensor]) -> KthSelector:
    """Radix select (:func:`dstrain.kernels.kth_smallest_abs`): Triton on CUDA, the same algorithm in torch elsewhere.

    Exact like kthvalue, but it neither concatenates nor sorts: 1.3-1.6x faster than
    torch.kthvalue on the CPU for ResNet50/BERT-base-sized models (benchmarks/), and
    kthvalue is far slower still on GPU (docs/kernels.md).
    """
    from dstrain.kernels import (
        kth_smallest_abs,  # on first use: importing the kernels reads their settings
    )

    return kth_smallest_abs


def num_to_prune(numel: int, sparsity: float) -> int:
    """round(sparsity * numel), the count every criterion must hit."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity={sparsity} must be in [0, 1)")
    return int(round(sparsity * numel))


def masks_below_threshold(tensors: Sequence[Tensor], k: int, selector: KthSelector,
                          partition: Optional[Any] = None) -> List[Tensor]:
    """Prune exactly ``k`` smallest-magnitude elements across ``tensors``.

    ``partition`` (a :class:`~dstrain.sparsity.zero3.PartitionedMaskRegistry`): ``tensors`` are
    this rank's ZeRO-3 shares and ``k`` counts over every rank's; counts are all-reduced and
    ties shared out in the single-process order, so the masks equal one process's.
    """
    if k <= 0:
        return [torch.ones_like(t, dtype=torch.bool) for t in tensors]
    threshold = selector(tensors, k)
    masks: List[Tensor] = []
    below_counts: List[int] = []
    for t in tensors:
        mag = t.detach().abs().float()
        below = mag < threshold
        masks.append(~below)
        below_counts.append(int(below.sum()))
    if partition is not None:
        return _prune_ties_across_ranks(tensors, masks, k - partition.count_total(sum(below_counts)), threshold,
                                        partition)
    ties_to_prune = k - sum(below_counts)
    for t, mask in zip(tensors, masks):
        if ties_to_prune <= 0:
            break
        # Logical (row-major) flat index, whatever the memory layout: a channels-last
        # weight gets exactly the mask of its contiguous copy, and ``mask`` keeps the
        # weight's layout (unravel_index writes through strides; view(-1) cannot).
        equal = (t.detach().abs().float() == threshold).reshape(-1)
        idx = torch.nonzero(equal, as_tuple=False).reshape(-1)[:ties_to_prune]
        mask[torch.unravel_index(idx, mask.shape)] = False
        ties_to_prune -= idx.numel()
    return masks


def _prune_ties_across_ranks(tensors: Sequence[Tensor], masks: List[Tensor], ties_to_prune: int, threshold: float,
                             partition: Any) -> List[Tensor]:
    equal = [t.detach().abs().float() == threshold for t in tensors]
    counts = partition.gather_counts([int(e.sum()) for e in equal])
    for mask, eq, take in zip(masks, equal, local_tie_break(counts, ties_to_prune, partition.rank)):
        if take:
            idx = torch.nonzero(eq.reshape(-1), as_tuple=False).reshape(-1)[:take]
            mask.view(-1)[idx] = False  # partitions are flat: the flat index is the element
    return masks


def global_magnitude_masks(tensors: Sequence[Tensor], sparsity: float,
                           selector: KthSelector | None = None) -> List[Tensor]:
    """One threshold over all tensors: layers with small weights lose more."""
    total = sum(t.numel() for t in tensors)
    k = num_to_prune(total, sparsity)
    return masks_below_threshold(tensors, k, selector or default_selector(tensors))


def layerwise_magnitude_masks(tensors: Sequence[Tensor], sparsity: float,
                              selector: KthSelector | None = None) -> List[Tensor]:
    """The same sparsity in every tensor (uniform)."""
    sel = selector or default_selector(tensors)
    return [masks_below_threshold([t], num_to_prune(t.numel(), sparsity), sel)[0] for t in tensors]


SCOPES = {"global": global_magnitude_masks, "layerwise": layerwise_magnitude_masks}


class MagnitudeCriterion(Criterion):
    """Prune the smallest |w|: over all prunable weights (``scope: global``), per tensor
    (``layerwise``), or per group of M along the reduction dimension (``pattern: "N:M"``).

    Pure functions of the weight values, so every data-parallel rank computes the same
    masks with no communication.
    """

    name = "magnitude"
    supports_nm = True

    def __init__(self, pruning: Any, registry: MaskRegistry, settings: Any = None,
                 selector: Optional[KthSelector] = None) -> None:
        super().__init__(pruning, registry, settings)
        self.selector = selector
        self.nm = parse_pattern(pruning.pattern)
        self.scope = pruning.scope

    def describe(self) -> List[str]:
        if self.nm is None:
            return []
        dense = dense_layers(self.registry, self.nm)
        if not dense:
            return [f"pattern {self.pruning.pattern}: all {len(self.registry.params)} prunable layers are N:M"]
        listed = ", ".join(f"{n} {list(s)}" for n, s in dense.items())
        return [f"pattern {self.pruning.pattern}: {len(dense)} prunable layer(s) left dense "
                f"(reduction length not a multiple of {self.nm[1]}): {listed}"]

    @torch.no_grad()
    def update(self, sparsity: float, step: int = 0) -> float:
        if getattr(self.registry, "partitioned", False):
            return self.registry.set_masks(self._partitioned_masks(sparsity))
        tensors = [self.registry.params[n] for n in self.registry.names()]
        if self.nm is not None:  # N:M: per-group magnitude, scope does not apply
            masks = nm_masks(tensors, sparsity, self.nm)
        else:
            masks = SCOPES[self.scope](tensors, sparsity, self.selector)
        return self.registry.set_masks(masks)

    def _partitioned_masks(self, sparsity: float) -> List[Tensor]:
        """ZeRO-3: the same masks as one process, from this rank's partitions (module docstring of
        :mod:`dstrain.sparsity.zero3`)."""
        reg = self.registry
        names = reg.names()
        if self.nm is not None:  # groups cross partition boundaries: one gathered layer at a time
            masks = []
            for name in names:
                if sparsity > 0 and shape_nm_eligible(reg.full_shapes[name], self.nm):
                    with reg.gathered(name) as full:
                        masks.append(reg.local_part(name, nm_mask(full, self.nm)).clone())
                else:
                    masks.append(torch.ones_like(reg.params[name], dtype=torch.bool))
            return masks
        kth = default_selector([])
        selector = self.selector or (lambda ts, k: kth(ts, k, reduce=reg.all_reduce))
        tensors = [reg.params[n] for n in names]
        if self.scope == "layerwise":
            return [masks_below_threshold([t], num_to_prune(reg.full_shapes[n].numel(), sparsity), selector, reg)[0]
                    for n, t in zip(names, tensors)]
        return masks_below_threshold(tensors, num_to_prune(reg.numel, sparsity), selector, reg)

    def result(self) -> Dict[str, Any]:
        if self.nm is None:
            return {}
        dense = sorted(dense_layers(self.registry, self.nm))
        if not getattr(self.registry, "partitioned", False):
            return {"nm_exact": registry_is_nm(self.registry, self.nm), "nm_dense_layers": dense}
        exact = True
        for name in self.registry.names():  # ZeRO-3: one gathered layer at a time
            if name not in dense:
                with self.registry.gathered(name) as full:
                    exact = exact and is_nm(full, self.nm)
        return {"nm_exact": exact, "nm_dense_layers": dense}
