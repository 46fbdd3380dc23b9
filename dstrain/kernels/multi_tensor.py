"""Multi-tensor launches: one kernel launch updates a whole list of tensors.

A launch gets, as ordinary int64 tensors:

* ``work_tid[w]``, ``work_start[w]``: work item ``w`` is elements
  ``[work_start[w], work_start[w] + CHUNK)`` of tensor ``work_tid[w]``; one program
  per work item, looping over its chunk in BLOCK-sized steps;
* ``numels[t]``: the size of tensor ``t`` (bounds the last chunk);
* one address table per role (param, grad, each state buffer, mask):
  ``table[t]`` is ``tensor.data_ptr()``, cast in-kernel to a typed pointer.

This is the apex ``multi_tensor_apply`` idea without a fixed argument-list size:
a ResNet50 step is one launch of ~900 programs instead of 161 launches, most of
which would be too small to fill the GPU.

Everything for one launch is packed into a single int64 buffer (one host-to-device
copy) and cached by its contents: the addresses and sizes of parameters, state and
(usually) gradients do not change between steps, so steady-state steps copy nothing.
Caching by contents is safe by construction: a hit means the tables would be
byte-identical anyway.

An optimizer that steps the same tensors every step keeps a :class:`LaunchGroup` per
launch instead (its own tables, never shared through the cache): when only the
gradients moved (``zero_grad(set_to_none=True)`` lets the allocator hand out new
addresses), :meth:`LaunchGroup.set_role` rewrites that one row in place rather than
rebuilding the work list.

Works under ``TRITON_INTERPRET=1`` for CPU tensors (the interpreter turns the
int64 -> pointer cast into a bitcast and dereferences host addresses); see
:func:`dstrain.kernels._runtime.check_device`.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import _runtime
from ._tl import ALIGN_BYTES

_CACHE_SIZE = 32
_CACHE: "OrderedDict[tuple, WorkList]" = OrderedDict()


@dataclass(frozen=True)
class WorkList:
    """Device-side tables for one multi-tensor launch (views into one int64 buffer)."""

    buffer: Tensor
    work_tid: Tensor
    work_start: Tensor
    numels: Tensor
    tables: Tuple[Tensor, ...]
    n_work: int
    total_elements: int


def _address(t: Optional[Tensor]) -> int:
    return 0 if t is None else int(t.data_ptr())


def build_work_list(roles: Sequence[Sequence[Optional[Tensor]]], numels: Sequence[int], chunk: int,
                    device: torch.device, use_cache: bool = True) -> WorkList:
    """Tables for tensors ``0..T-1``: ``roles[r][t]`` is tensor ``t``'s buffer for role ``r`` (None -> address 0).

    Tensors with zero elements get no work items (their tables still have a row).
    """
    n_tensors = len(numels)
    addresses = tuple(tuple(_address(t) for t in role) for role in roles)
    key = (str(device), chunk, tuple(numels), addresses)
    if use_cache:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
            return hit
    tids: List[int] = []
    starts: List[int] = []
    for t, n in enumerate(numels):
        for s in range(0, n, chunk):
            tids.append(t)
            starts.append(s)
    n_work = len(tids)
    host: List[int] = tids + starts + list(numels)
    for role in addresses:
        host.extend(role)
    buffer = torch.tensor(host, dtype=torch.int64).to(device, non_blocking=False)
    views: List[Tensor] = []
    offset = 0
    for length in [n_work, n_work, n_tensors] + [n_tensors] * len(roles):
        views.append(buffer[offset: offset + length])
        offset += length
    wl = WorkList(buffer, views[0], views[1], views[2], tuple(views[3:]), n_work, int(sum(numels)))
    if use_cache:
        _CACHE[key] = wl
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return wl


def is_aligned(tensors: Sequence[Optional[Tensor]]) -> bool:
    """Whether every tensor starts on an ``ALIGN_BYTES`` boundary, so a kernel may be told so.

    Fresh allocations always do; views into flat buffers (DeepSpeed's ZeRO partitions,
    ``tensor[1:]``) may not, and get the kernels' unaligned variant instead.
    """
    return all(t is None or t.data_ptr() % ALIGN_BYTES == 0 for t in tensors)


def group_indices(keys: Sequence[tuple]) -> Dict[tuple, List[int]]:
    """Indices grouped by launch key (dtype/mask kind/flags), in first-seen order.

    Each group becomes one launch, since a kernel's pointer element types and
    mask format are compile-time constants.
    """
    groups: Dict[tuple, List[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    return groups




class LaunchGroup:
    """One multi-tensor launch of a step plan: its tensors (by role), its tables and its compile-time flags.

    Why a class: the tables, flags and autotune key of a launch depend only on which
    tensors it updates, so an optimizer builds them once and, per step, passes only the
    step's scalars (:meth:`launch`).  ``kernel`` is called at launch time to get the
    jitted kernel, so a wrapper installed on the module attribute (tests count launches
    that way) is seen.
    """

    def __init__(self, kernel: Callable[[], Any], tune_key: tuple, indices: List[int],
                 roles: List[List[Optional[Tensor]]], numels: List[int], chunk: int, device: torch.device,
                 flags: Dict[str, Any], use_cache: bool) -> None:
        self.kernel = kernel
        self.tune_key = tune_key
        self.indices = indices
        self.roles = roles
        self.numels = numels
        self.chunk = chunk
        self.device = device
        self.flags = flags
        self.bucket = _runtime.tune_bucket(sum(numels))
        self.wl = build_work_list(roles, numels, chunk, device, use_cache=use_cache)
        self.owned = not use_cache

    def set_role(self, role: int, tensors: List[Optional[Tensor]], addresses: Sequence[int]) -> None:
        """Point role ``role`` at new tensors (same sizes) at ``addresses``: one small host-to-device copy.

        Only for owned tables (built with ``use_cache=False``): cached ones are shared by
        content.  The copy is stream-ordered after any launch that still reads the old row.
        """
        if not self.owned:
            raise RuntimeError("set_role on a cached work list would corrupt the cache; build with use_cache=False")
        self.roles[role] = tensors
        self.wl.tables[role].copy_(torch.tensor(addresses, dtype=torch.int64))

    def launch(self, *extra: Any) -> None:
        """Launch over this group's tables with ``extra`` (per-step scalars/tensors), then the tune bucket.

        The first launch for a ``tune_key`` autotunes on scratch copies
        (:func:`dstrain.kernels._runtime.launch_tuned`), so the real tensors are stepped exactly once.
        """
        def run(scratch: bool) -> None:
            wl = self.wl
            if scratch:
                roles = [[None if t is None else t.clone() for t in role] for role in self.roles]
                wl = build_work_list(roles, self.numels, self.chunk, self.device, use_cache=False)
            _runtime.launch(self.kernel(), (wl.n_work,), wl.work_tid, wl.work_start, wl.numels, *wl.tables,
                            *extra, self.bucket, **self.flags)

        _runtime.launch_tuned(self.tune_key, run)
