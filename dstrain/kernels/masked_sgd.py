"""Fused masked SGD: one pass reads param, grad, momentum and mask and writes param and momentum.

Reproduces :func:`dstrain.optim.functional.masked_sgd` element by element, with
FMAs exactly where torch's reference rounds once (``add(alpha=)``; verified for
torch's CPU kernels, and what nvcc emits for the CUDA ones), so results match the
reference bitwise on the CPU interpreter and up to fp32 rounding elsewhere.  Pruned
elements are written as +0.0 with ``where`` (the reference multiplies by the mask,
which gives -0.0 for negative weights; the two compare equal).
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _runtime
from ._tl import (
    ALIGN_BYTES,
    GRAD_KINDS,
    block_offsets,
    fma,
    grad_ptr,
    load_block,
    load_keep,
    mask_ptr,
    store_block,
    typed_ptr,
)
from .bitmask import Mask, mask_kind, mask_storage
from .multi_tensor import LaunchGroup, group_indices, is_aligned
from .validate import GRAD_DTYPES, check_lengths, check_like, check_mask, check_param


@triton.jit
def _sgd_block(offs, end, p_ptr, g_ptr, b_ptr, keep_ptr, neg_lr, momentum, one_minus_damp, weight_decay,
               MASK_KIND: tl.constexpr, HAS_MOMENTUM: tl.constexpr, FIRST_STEP: tl.constexpr,
               NESTEROV: tl.constexpr, HAS_WD: tl.constexpr, MAXIMIZE: tl.constexpr,
               EMULATE_FMA: tl.constexpr, MASKED: tl.constexpr):
    """The update of one block of elements; MASKED only for a chunk's last, partial block."""
    p = load_block(p_ptr, offs, end, MASKED)
    g = load_block(g_ptr, offs, end, MASKED).to(tl.float32)
    if MAXIMIZE:
        g = -g
    if HAS_WD:
        g = fma(p, weight_decay, g, EMULATE_FMA)  # grad.add(param, alpha=wd)
    buf = g
    if HAS_MOMENTUM:
        if not FIRST_STEP:  # first step: buf = clone(grad), as torch does
            buf = load_block(b_ptr, offs, end, MASKED)
            buf = fma(g, one_minus_damp, buf * momentum, EMULATE_FMA)  # mul_(m).add_(g, alpha=1-d)
        if NESTEROV:
            g = fma(buf, momentum, g, EMULATE_FMA)  # grad.add(buf, alpha=momentum)
        else:
            g = buf
    p = fma(g, neg_lr, p, EMULATE_FMA)  # param.add_(grad, alpha=-lr)
    if MASK_KIND != 0:
        keep = load_keep(keep_ptr, offs, end, MASK_KIND, MASKED)
        p = tl.where(keep, p, 0.0)
        buf = tl.where(keep, buf, 0.0)
    store_block(p_ptr, offs, end, p, MASKED)
    if HAS_MOMENTUM:
        store_block(b_ptr, offs, end, buf, MASKED)


def _masked_sgd_kernel(
    work_tid, work_start, numels, p_tab, g_tab, b_tab, m_tab,
    neg_lr, momentum, one_minus_damp, weight_decay, tune_key,
    CHUNK: tl.constexpr, GRAD_KIND: tl.constexpr, MASK_KIND: tl.constexpr,
    HAS_MOMENTUM: tl.constexpr, FIRST_STEP: tl.constexpr, NESTEROV: tl.constexpr,
    HAS_WD: tl.constexpr, MAXIMIZE: tl.constexpr, EMULATE_FMA: tl.constexpr,
    ALIGNED: tl.constexpr, BLOCK: tl.constexpr,
):
    """One program per work item (a CHUNK of one tensor): full BLOCKs unmasked, then the tail."""
    w = tl.program_id(0)
    tid = tl.load(work_tid + w)
    start = tl.load(work_start + w)
    end = tl.minimum(start + CHUNK, tl.load(numels + tid))
    p_ptr = typed_ptr(tl.load(p_tab + tid), tl.float32, ALIGNED)
    g_ptr = grad_ptr(tl.load(g_tab + tid), GRAD_KIND, ALIGNED)
    b_ptr = p_ptr
    if HAS_MOMENTUM:
        b_ptr = typed_ptr(tl.load(b_tab + tid), tl.float32, ALIGNED)
    keep_ptr = mask_ptr(tl.load(p_tab + tid), MASK_KIND, ALIGNED)  # unused when dense
    if MASK_KIND != 0:
        keep_ptr = mask_ptr(tl.load(m_tab + tid), MASK_KIND, ALIGNED)
    full_end = start + (end - start) // BLOCK * BLOCK
    for off in range(start, full_end, BLOCK):
        _sgd_block(block_offsets(off, BLOCK), end, p_ptr, g_ptr, b_ptr, keep_ptr, neg_lr, momentum,
                   one_minus_damp, weight_decay, MASK_KIND, HAS_MOMENTUM, FIRST_STEP, NESTEROV, HAS_WD,
                   MAXIMIZE, EMULATE_FMA, False)
    for off in range(full_end, end, BLOCK):
        _sgd_block(block_offsets(off, BLOCK), end, p_ptr, g_ptr, b_ptr, keep_ptr, neg_lr, momentum,
                   one_minus_damp, weight_decay, MASK_KIND, HAS_MOMENTUM, FIRST_STEP, NESTEROV, HAS_WD,
                   MAXIMIZE, EMULATE_FMA, True)


_kernel = _runtime.jit_tuned(_masked_sgd_kernel, key=["tune_key", "GRAD_KIND", "MASK_KIND", "ALIGNED"])


def _check(params, grads, momentum_buffers, masks, has_momentum: bool) -> None:
    check_lengths([("params", len(params)), ("grads", len(grads)), ("masks", len(masks))]
                  + ([("momentum_buffers", len(momentum_buffers))] if has_momentum else []))
    for i, p in enumerate(params):
        check_param(p, i)
        check_like(grads[i], p, f"grads[{i}]", GRAD_DTYPES)
        if has_momentum and momentum_buffers[i] is not None:
            check_like(momentum_buffers[i], p, f"momentum_buffers[{i}]", (torch.float32,))
        check_mask(masks[i], p, i)


def _get_kernel():
    return _kernel  # looked up per launch, so a wrapper patched onto the module is used


class SGDPlan:
    """A masked SGD step over a fixed list of tensors, with everything but the step's scalars prepared.

    Why: an optimizer steps the same tensors every step, so argument checks, grouping,
    pointer tables and compile-time flags are host work to do once, not per step (at
    ~200 tensors that work costs milliseconds, more than the kernels themselves).
    ``flags_key`` holds the hyperparameters that select a kernel variant; the caller
    rebuilds the plan when they change.  Momentum buffers that are ``None`` are
    allocated here (written into ``momentum_buffers``) and initialised by the first
    :meth:`run`, as torch does (``buf = grad``); after that run :attr:`stale` is set,
    since the next step compiles a different variant (a rebuild costs one step's old price).
    """

    def __init__(self, params: Sequence[Tensor], grads: Sequence[Tensor], momentum_buffers: List[Optional[Tensor]],
                 masks: Sequence[Optional[Mask]], *, momentum: float, nesterov: bool, weight_decay: float,
                 maximize: bool, use_cache: bool = True) -> None:
        has_momentum = momentum != 0
        _check(params, grads, momentum_buffers, masks, has_momentum)
        self.flags_key = (has_momentum, bool(nesterov), weight_decay != 0, bool(maximize))
        first = [False] * len(params)
        if has_momentum:
            for i, p in enumerate(params):
                if momentum_buffers[i] is None:
                    momentum_buffers[i] = torch.empty_like(p, memory_format=torch.contiguous_format)
                    first[i] = True
        self.stale = False
        self.first_step = any(first)
        self.aligned = [is_aligned([g]) for g in grads]
        self.grad_dtypes = [g.dtype for g in grads]
        keys = [(p.device, GRAD_KINDS[grads[i].dtype], mask_kind(masks[i]), first[i],
                 self.aligned[i] and is_aligned([p, momentum_buffers[i] if has_momentum else None,
                                                 mask_storage(masks[i])]))
                for i, p in enumerate(params)]
        chunk = _runtime.chunk_size()
        self.groups: List[LaunchGroup] = []
        for (device, grad_kind, m_kind, first_step, aligned), idx in group_indices(keys).items():
            numels = [params[i].numel() for i in idx]
            if sum(numels) == 0:
                continue
            roles = [
                [params[i] for i in idx],
                [grads[i] for i in idx],
                [momentum_buffers[i] if has_momentum else None for i in idx],
                [mask_storage(masks[i]) for i in idx],
            ]
            tune_key = _runtime.tune_bucket(sum(numels))
            flags = dict(CHUNK=chunk, GRAD_KIND=grad_kind, MASK_KIND=m_kind, HAS_MOMENTUM=has_momentum,
                         FIRST_STEP=first_step, NESTEROV=bool(nesterov), HAS_WD=weight_decay != 0,
                         MAXIMIZE=bool(maximize), EMULATE_FMA=_runtime.INTERPRET, ALIGNED=aligned,
                         **_runtime.block_kwargs())
            self.groups.append(LaunchGroup(_get_kernel, ("sgd", str(device), tune_key, grad_kind, m_kind, aligned),
                                           idx, roles, numels, chunk, device, flags, use_cache))

    def set_grads(self, params: Sequence[Tensor], grads: Sequence[Tensor], moved: Sequence[int],
                  addresses: Sequence[int]) -> bool:
        """Point the grad tables at new gradients (``moved``: indices whose ``addresses`` changed).

        Returns False (the caller rebuilds the plan) if a new gradient has another dtype or
        breaks its group's alignment promise; raises ValueError for one the kernels cannot
        take (not contiguous).
        """
        return _set_grads(self, params, grads, moved, addresses)

    def run(self, *, lr: float, momentum: float, dampening: float, weight_decay: float) -> None:
        scalars = (-lr, momentum, 1.0 - dampening, weight_decay)
        for group in self.groups:
            group.launch(*scalars)
        if self.first_step:
            self.stale = True


def _set_grads(plan, params: Sequence[Tensor], grads: Sequence[Tensor], moved: Sequence[int],
               addresses: Sequence[int]) -> bool:
    """Shared by the SGD and AdamW plans (role 1 is the gradient in both).

    A gradient read from ``p.grad`` has its parameter's shape and device (torch's
    setter and autograd enforce it); what can differ is its dtype, its layout and its
    alignment, checked here without building a message unless one is wrong.
    """
    for i in moved:
        g = grads[i]
        if g.dtype is not plan.grad_dtypes[i] or not g.is_contiguous():
            check_like(g, params[i], f"grads[{i}]", GRAD_DTYPES)  # raises for a bad layout; else a new dtype
            return False
        if (addresses[i] % ALIGN_BYTES == 0) != plan.aligned[i]:
            return False
    for group in plan.groups:
        idx = group.indices
        group.set_role(1, [grads[i] for i in idx], [addresses[i] for i in idx])
    return True


def fused_masked_sgd(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    momentum_buffers: List[Optional[Tensor]],
    masks: Sequence[Optional[Mask]],
    *,
    lr: float,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    maximize: bool = False,
) -> None:
    """One masked SGD step over all ``params`` in a handful of multi-tensor launches.

    Same contract as :func:`dstrain.optim.functional.masked_sgd`: updates ``params``
    in place; with ``momentum != 0``, ``None`` entries of ``momentum_buffers`` are
    allocated and written into the list (the first step sets ``buf = grad``).  A mask
    is a bool/uint8 tensor shaped like its parameter, a :class:`~dstrain.kernels.bitmask.BitMask`,
    or ``None`` (dense).  Masked-out elements come out exactly 0 in the parameter and
    its momentum buffer.  One launch per distinct (device, grad dtype, mask format,
    first-step, 16-byte alignment) combination, usually one or two.  (An optimizer
    stepping the same tensors repeatedly keeps an :class:`SGDPlan` instead.)

    Raises ValueError (before touching anything) for non-contiguous tensors and
    dtype/shape/device mismatches.
    """
    plan = SGDPlan(params, grads, momentum_buffers, masks, momentum=momentum, nesterov=nesterov,
                   weight_decay=weight_decay, maximize=maximize, use_cache=True)
    plan.run(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay)
