"""Masks for the tensors DeepSpeed's optimizer wrappers really hand to the client optimizer.

Under ZeRO-1/2, and under stage-0 bf16/fp16, DeepSpeed flattens each parameter group
into one low-precision buffer, makes the model's parameters views into it, and
gives the client optimizer an fp32 copy of this rank's slice (a "partition")
instead of the parameters.  A mask keyed by the model's parameters never reaches
that step.  This module builds, for each fp32 partition, the flat bool mask of
exactly the elements it holds, by locating every model parameter and the
partition inside the shared flat buffer (storage offsets; no assumption about
DeepSpeed's padding or ordering).  The masked optimizer then runs its fused step
on the partition as it would on a parameter.  Under ZeRO-3 the registry's tensors are
already this rank's slices of each parameter (:mod:`dstrain.sparsity.zero3`), views into
DeepSpeed's flat 16-bit partition: the same offset arithmetic places their masks in the
fp32 master partition (the padding at the end of the last rank's slice holds no weight and
gets no gradient: it stays 0 unmasked).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.distributed as dist
from torch import Tensor

from dstrain.sparsity.registry import MaskRegistry


@dataclass
class _Partition:
    master: Tensor  # fp32 tensor stepped by the client optimizer
    flat: Tensor  # the low-precision flat buffer model params are views of
    view: Tensor  # the slice of ``flat`` that ``master`` mirrors
    mask: Tensor  # bool, shape of ``master``
    prunable: bool = False


def _offset(view: Tensor, base: Tensor) -> Optional[int]:
    """Element offset of ``view`` inside ``base`` if they share storage."""
    if view.untyped_storage().data_ptr() != base.untyped_storage().data_ptr():
        return None
    return (view.data_ptr() - base.data_ptr()) // base.element_size()


def _group_rank(wrapper, i: int) -> int:
    groups = getattr(wrapper, "real_dp_process_group", None)
    if groups is None or not dist.is_initialized():
        return 0
    return dist.get_rank(group=groups[i])


def _partitions_of(wrapper) -> List[tuple]:
    """(master, flat, view) triples for the DeepSpeed optimizer wrappers that flatten."""
    if hasattr(wrapper, "single_partition_of_fp32_groups"):  # ZeRO stage 1/2
        return [(m, f, parts[_group_rank(wrapper, i)]) for i, (m, f, parts) in enumerate(zip(
            wrapper.single_partition_of_fp32_groups, wrapper.bit16_groups_flat,
            wrapper.parallel_partitioned_bit16_groups))]
    if hasattr(wrapper, "fp32_groups_flat_partition"):  # bf16 optimizer (stage 0 + bf16)
        return [(m, f, parts[_group_rank(wrapper, i)]) for i, (m, f, parts) in enumerate(zip(
            wrapper.fp32_groups_flat_partition, wrapper.bf16_groups_flat, wrapper.bf16_partitioned_groups))]
    if hasattr(wrapper, "fp32_partitioned_groups_flat"):  # ZeRO stage 3: this rank's partitions, flat per sub-group
        return [(m, f, f) for m, f in zip(wrapper.fp32_partitioned_groups_flat, wrapper.fp16_partitioned_groups_flat)]
    if hasattr(wrapper, "fp32_groups_flat") and hasattr(wrapper, "fp16_groups_flat"):  # fused fp16 (stage 0)
        return [(m, f, f) for m, f in zip(wrapper.fp32_groups_flat, wrapper.fp16_groups_flat)]
    return []


def _per_param_masters(wrapper) -> List[tuple]:
    """(master, model param) pairs for the unfused fp16/bf16 wrapper (one fp32 copy per parameter)."""
    if hasattr(wrapper, "fp32_groups") and hasattr(wrapper, "fp16_groups") and not hasattr(wrapper, "fp16_groups_flat"):
        return [(m, p) for ms, ps in zip(wrapper.fp32_groups, wrapper.fp16_groups) for m, p in zip(ms, ps)]
    return []


class PartitionMasks:
    """Mask source for the client optimizer that works with and without DeepSpeed flattening."""

    def __init__(self, engine_optimizer, registry: MaskRegistry) -> None:
        self.registry = registry
        self.partitions: Dict[int, _Partition] = {}
        # Unfused wrappers keep one fp32 master per parameter: same shape, so the same mask.
        self.per_param_masters = _per_param_masters(engine_optimizer)
        self.master_to_param: Dict[int, Tensor] = {id(master): param for master, param in self.per_param_masters}
        for master, flat, view in _partitions_of(engine_optimizer):
            mask = torch.ones(master.shape, dtype=torch.bool, device=master.device)
            self.partitions[id(master)] = _Partition(master, flat, view, mask)
        self.shared = bool(getattr(registry, "partitioned", False)) and bool(self.partitions)
        self.refresh()
        if self.shared:
            self._share_registry_masks()

    @torch.no_grad()
    def _share_registry_masks(self) -> None:
        """ZeRO-3: make each registry mask a view of its place in the master's flat mask (one byte per owned
        weight, not two); from then on a mask update writes the optimizer's masks directly."""
        for part in self.partitions.values():
            flat_mask = part.mask.view(-1)
            for name, local in self.registry.params.items():
                offset = _offset(local.data, part.flat)
                if offset is not None:
                    flat_mask[offset:offset + local.numel()] = self.registry.masks[name]
                    self.registry.masks[name] = flat_mask[offset:offset + local.numel()]
                    part.prunable = True
        self.registry._reindex()

    @property
    def flattened(self) -> bool:
        """True when the optimizer steps fp32 copies rather than the model's parameters."""
        return bool(self.partitions) or bool(self.master_to_param)

    @torch.no_grad()
    def refresh(self) -> None:
        """Re-slice the registry's masks into every partition (after each mask update)."""
        if getattr(self, "shared", False):
            return  # ZeRO-3: the registry's masks are views of the partitions' masks
        for part in self.partitions.values():
            start = _offset(part.view, part.flat)
            end = start + part.view.numel()
            flat_mask = part.mask.view(-1)
            flat_mask.fill_(True)
            part.prunable = False
            for name, param in self.registry.params.items():
                offset = _offset(param.data, part.flat)
                if offset is None:
                    continue
                lo, hi = max(offset, start), min(offset + param.numel(), end)
                if lo < hi:
                    source = self.registry.masks[name].reshape(-1)[lo - offset:hi - offset]
                    flat_mask[lo - start:hi - start] = source.to(flat_mask.device)
                    part.prunable = True

    @torch.no_grad()
    def write_masters(self, deltas: Dict[str, Tensor], masks: Dict[str, Tensor]) -> None:
        """Add changes of prunable parameters (by registry name) to the fp32 master copies, zero pruned entries.

        For criteria that change surviving weights (the oBERT/OBS correction): the optimizer
        steps the masters, so a change made to the model's parameters alone would be
        overwritten by the next step.  Adding the change, rather than copying the model's
        value, keeps the masters' extra precision under bf16/fp16 (the change was computed
        from the low-precision weights; weights it did not touch keep their master value).
        """
        def apply(flat_master: Tensor, delta: Tensor, mask: Tensor) -> None:
            flat_master.add_(delta.to(flat_master.device, flat_master.dtype))
            flat_master.masked_fill_(~mask.to(flat_master.device), 0.0)

        for part in self.partitions.values():
            start = _offset(part.view, part.flat)
            end = start + part.view.numel()
            flat_master = part.master.view(-1)
            for name, param in self.registry.params.items():
                offset = _offset(param.data, part.flat)
                if offset is None or name not in deltas:
                    continue
                lo, hi = max(offset, start), min(offset + param.numel(), end)
                if lo < hi:
                    apply(flat_master[lo - start:hi - start], deltas[name].reshape(-1)[lo - offset:hi - offset],
                          masks[name].reshape(-1)[lo - offset:hi - offset])
        for master, param in self.per_param_masters:
            for name, p in self.registry.params.items():
                if p is param and name in deltas:
                    apply(master.view(-1), deltas[name].reshape(-1), masks[name].reshape(-1))

    def mask_for(self, tensor: Tensor) -> Optional[Tensor]:
        part = self.partitions.get(id(tensor))
        if part is not None:
            return part.mask if part.prunable else None
        return self.registry.mask_for(self.master_to_param.get(id(tensor), tensor))

    def masters_and_masks(self) -> List[tuple]:
        """(fp32 master, mask) for every master copy that has a mask."""
        pairs = [(p.master, p.mask) for p in self.partitions.values() if p.prunable]
        for master, param in self.per_param_masters:
            mask = self.registry.mask_for(param)
            if mask is not None:
                pairs.append((master, mask))
        return pairs
