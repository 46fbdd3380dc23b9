"""Masks of ZeRO-3 partitions: each rank holds the mask of exactly the elements it owns.

Why a registry of its own: under ZeRO stage 3 DeepSpeed keeps, on each rank, only a
slice of every parameter (``param.ds_tensor``: elements ``rank * P`` to ``rank * P + P - 1``
of the flattened parameter, ``P = ceil(numel / world)``, zero-padded on the last rank);
``param.numel()`` is 0 outside DeepSpeed's gathers.  A full-size mask per rank would cost
what ZeRO-3 saves, so this registry keeps one 1-D bool mask per parameter of the rank's
*valid* elements (the padding is no weight) and answers every question (sparsity, revived
weights) with an all-reduce over the ranks.  Its ``params`` are the matching 1-D views of the
partitions, so the criteria select on exactly the values the model computes with, and
:class:`~dstrain.sparsity.partitions.PartitionMasks` finds them inside DeepSpeed's flat
buffers by storage offset, as for stages 1 and 2.

Criteria that need a whole layer at once (N:M groups, which run along the input dimension
across partition boundaries) gather it with DeepSpeed's own ``GatheredParameters``, one
layer at a time (:meth:`gathered`); global and layerwise magnitude select across the
partitions with all-reduced histograms and never gather a weight.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from dstrain.errors import ConfigError
from dstrain.sparsity.registry import MaskRegistry, PrunableSelection, select_prunable


def is_partitioned(param: Tensor) -> bool:
    """True for a parameter ZeRO-3 has partitioned (it carries ``ds_tensor``)."""
    return hasattr(param, "ds_tensor")


def _all_reduce_sum(value: Tensor) -> Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(value)
    return value


class PartitionedMaskRegistry(MaskRegistry):
    """A :class:`MaskRegistry` over this rank's ZeRO-3 partitions (see the module docstring)."""

    partitioned = True

    def __init__(self, model: nn.Module, selection: Optional[PrunableSelection] = None) -> None:
        self.model = model
        self.selection = selection or PrunableSelection()
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.modules_params: Dict[str, nn.Parameter] = select_prunable(model, self.selection)
        self.full_shapes: Dict[str, torch.Size] = {}
        self.starts: Dict[str, int] = {}
        self.params: Dict[str, Tensor] = {}
        for name, param in self.modules_params.items():
            if not is_partitioned(param):
                raise ValueError(f"{name} is not a ZeRO-3 partitioned parameter")
            if getattr(param, "ds_persist", False):
                raise ConfigError("ds_config.zero_optimization.stage3_param_persistence_threshold",
                                  f"makes the prunable weight {name} ({param.ds_numel} elements) persistent: its full "
                                  "copy would not see a mask update until the next step",
                                  f"set it below {param.ds_numel} (dstrain's default is 0)")
            per_rank = param.ds_tensor.numel()
            start = self.rank * per_rank
            valid = max(0, min(per_rank, param.ds_numel - start))
            self.full_shapes[name] = torch.Size(param.ds_shape)
            self.starts[name] = start
            self.params[name] = param.ds_tensor.data.view(-1)[:valid]
        self.masks: Dict[str, Tensor] = {n: torch.ones_like(t, dtype=torch.bool) for n, t in self.params.items()}
        self._by_param: Dict[int, Tensor] = {}
        self._reindex()

    # --- what only the whole model knows --------------------------------------------------
    @property
    def numel(self) -> int:
        return sum(int(s.numel()) for s in self.full_shapes.values())

    def all_reduce(self, value: Tensor) -> None:
        """Sum ``value`` in place over the ranks (the histogram hook of a distributed selection)."""
        _all_reduce_sum(value)

    def _count(self, values: List[int]) -> List[int]:
        total = _all_reduce_sum(torch.tensor(values, dtype=torch.int64))
        return [int(v) for v in total]

    def count_total(self, value: int) -> int:
        """``value`` summed over the ranks."""
        return self._count([value])[0]

    def gather_counts(self, values: List[int]) -> List[List[int]]:
        """Every rank's ``values`` (one small all-gather), indexed ``[rank][i]``."""
        local = torch.tensor(values, dtype=torch.int64)
        if not (dist.is_available() and dist.is_initialized() and self.world > 1):
            return [values]
        out = [torch.zeros_like(local) for _ in range(self.world)]
        dist.all_gather(out, local)
        return [[int(v) for v in t] for t in out]

    def mask_sparsity(self) -> float:
        pruned = self._count([sum(int((~m).sum()) for m in self.masks.values())])[0]
        return pruned / max(self.numel, 1)

    @torch.no_grad()
    def weight_sparsity(self) -> float:
        zeros = self._count([sum(int((p == 0).sum()) for p in self.params.values())])[0]
        return zeros / max(self.numel, 1)

    @torch.no_grad()
    def layer_sparsity(self) -> Dict[str, float]:
        zeros = self._count([int((p == 0).sum()) for p in self.params.values()])
        return {n: z / max(int(self.full_shapes[n].numel()), 1) for n, z in zip(self.params, zeros)}

    @torch.no_grad()
    def revived(self) -> int:
        return self._count([sum(int((self.params[n][~m] != 0).sum()) for n, m in self.masks.items())])[0]

    release_gathered: Optional[Callable[[], None]] = None
    """Frees every whole copy DeepSpeed still holds (the engine's ``empty_partition_cache``): a layer
    gathered for a forward without backward (an evaluation) stays whole, and a mask update made on the
    partitions would not reach that copy before the next forward used it."""

    @torch.no_grad()
    def set_masks(self, new_masks: Sequence[Tensor]) -> float:
        """Install this rank's new masks, zero its pruned weights; returns the flip rate over all ranks."""
        if self.release_gathered is not None:
            self.release_gathered()
        names = self.names()
        flips = sum(int((new != self.masks[n]).sum()) for n, new in zip(names, new_masks))
        for n, new in zip(names, new_masks):
            self.masks[n].copy_(new)
        self.apply()
        return self._count([flips])[0] / max(self.numel, 1)

    # --- whole layers, one at a time, inside DeepSpeed's own gather ---------------------------
    @contextlib.contextmanager
    def gathered(self, name: str) -> Iterator[Tensor]:
        """The full weight ``name`` (every rank) for the duration of the block; edits are not written back."""
        import deepspeed

        param = self.modules_params[name]
        with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
            yield param.data

    def local_part(self, name: str, full: Tensor) -> Tensor:
        """This rank's valid elements of a full-shape tensor (e.g. a mask computed on a gathered layer)."""
        start = self.starts[name]
        return full.reshape(-1)[start:start + self.params[name].numel()]

    # --- what a single process does differently -------------------------------------------------
    def follow_param_devices(self) -> None:
        """Partitions never move: DeepSpeed placed them."""

    def follow_param_layouts(self) -> None:
        """Partitions are flat: there is no layout to follow."""

    def load_state_dict(self, state: Dict[str, Tensor]) -> None:
        """This rank's masks from its own checkpoint file (each rank saves and loads its own)."""
        super().load_state_dict(state)


def local_tie_break(counts: Sequence[Sequence[int]], to_prune: int, rank: int) -> List[int]:
    """How many of this rank's elements equal to the threshold to prune, per tensor.

    ``counts[r][t]`` is rank ``r``'s number of equal elements in tensor ``t``.  The global
    order is the single-process one (tensor order, then flat index), and a tensor's flat
    indices run rank by rank, so the earliest ties are taken tensor by tensor, rank by rank:
    every rank computes the same allocation and prunes exactly the elements one process would.
    """
    mine = [0] * (len(counts[0]) if counts else 0)
    left = to_prune
    for t in range(len(mine)):
        for r, rank_counts in enumerate(counts):
            take = min(left, int(rank_counts[t]))
            if r == rank:
                mine[t] = take
            left -= take
    return mine
