"""Fused masked AdamW: one pass reads param, grad, both moments and the mask, and writes param and moments.

Reproduces :func:`dstrain.optim.functional.masked_adamw` element by element:

* scalars (``1 - lr*wd``, ``lr / (1 - beta1**step)``, ``sqrt(1 - beta2**step)``) are
  computed in Python double precision per tensor and rounded to fp32, as torch does;
* FMAs sit exactly where torch rounds once: ``lerp`` and ``addcmul``;
* the order of the final ops follows the torch backend of the reference run:
  on the CPU, ``sqrt(v) / bc2`` and ``p + (-step_size * m) / denom``; torch's CUDA
  kernels instead multiply by ``1/bc2`` and compute ``p + (-step_size) * (m / denom)``
  (one FMA), so the compiled GPU path uses that order (``CUDA_ORDER``).  Square
  roots and divisions are IEEE round-to-nearest (``sqrt_rn``/``div_rn``), not
  Triton's default approximations.

Against torch's CPU reference the moments match bitwise and the parameter to 1-2
ulp: torch's CPU ``sqrt`` is not always correctly rounded.  Against an emulation
with an exact sqrt, both orders match bitwise (tests/test_kernels.py).

Pruned elements are written as +0.0 in the parameter and both moments.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _runtime
from ._tl import (
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
from .adamw_scalars import adamw_step_scalars
from .bitmask import Mask, mask_kind, mask_storage
from .multi_tensor import LaunchGroup, group_indices, is_aligned
from .validate import GRAD_DTYPES, check_lengths, check_like, check_mask, check_param


@triton.jit
def _adamw_block(offs, end, p_ptr, g_ptr, m_ptr, v_ptr, keep_ptr, ss, bc2, inv_bc2,
                 decay, lerp_coeff, beta2, one_minus_beta2, eps,
                 MASK_KIND: tl.constexpr, LERP_SMALL: tl.constexpr, MAXIMIZE: tl.constexpr,
                 CUDA_ORDER: tl.constexpr, EMULATE_FMA: tl.constexpr, MASKED: tl.constexpr):
    """The update of one block of elements; MASKED only for a chunk's last, partial block."""
    p = load_block(p_ptr, offs, end, MASKED)
    m = load_block(m_ptr, offs, end, MASKED)
    v = load_block(v_ptr, offs, end, MASKED)
    g = load_block(g_ptr, offs, end, MASKED).to(tl.float32)
    if MAXIMIZE:
        g = -g
    p = p * decay  # param.mul_(1 - lr * wd)
    if LERP_SMALL:  # exp_avg.lerp_(grad, 1 - beta1), torch's two-branch lerp
        m = fma(lerp_coeff, g - m, m, EMULATE_FMA)
    else:
        m = fma(lerp_coeff, g - m, g, EMULATE_FMA)
    v = fma(g * one_minus_beta2, g, v * beta2, EMULATE_FMA)  # mul_(b2).addcmul_(g, g, 1-b2)
    if CUDA_ORDER:
        denom = tl.sqrt_rn(v) * inv_bc2 + eps
        p = fma(ss, tl.div_rn(m, denom), p, EMULATE_FMA)
    else:
        denom = tl.div_rn(tl.sqrt_rn(v), tl.cast(bc2, tl.float32)) + eps
        p = p + tl.div_rn(ss * m, denom)
    if MASK_KIND != 0:
        keep = load_keep(keep_ptr, offs, end, MASK_KIND, MASKED)
        p = tl.where(keep, p, 0.0)
        m = tl.where(keep, m, 0.0)
        v = tl.where(keep, v, 0.0)
    store_block(p_ptr, offs, end, p, MASKED)
    store_block(m_ptr, offs, end, m, MASKED)
    store_block(v_ptr, offs, end, v, MASKED)


def _masked_adamw_kernel(
    work_tid, work_start, numels, p_tab, g_tab, m_tab, v_tab, mask_tab, neg_ss_tab, bc2_tab,
    decay, lerp_coeff, beta2, one_minus_beta2, eps, neg_step_size, bc2_sqrt, tune_key,
    CHUNK: tl.constexpr, GRAD_KIND: tl.constexpr, MASK_KIND: tl.constexpr, LERP_SMALL: tl.constexpr,
    PER_TENSOR_STEP: tl.constexpr, MAXIMIZE: tl.constexpr, CUDA_ORDER: tl.constexpr,
    EMULATE_FMA: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr,
):
    """One program per work item (a CHUNK of one tensor): full BLOCKs unmasked, then the tail."""
    w = tl.program_id(0)
    tid = tl.load(work_tid + w)
    start = tl.load(work_start + w)
    end = tl.minimum(start + CHUNK, tl.load(numels + tid))
    p_ptr = typed_ptr(tl.load(p_tab + tid), tl.float32, ALIGNED)
    m_ptr = typed_ptr(tl.load(m_tab + tid), tl.float32, ALIGNED)
    v_ptr = typed_ptr(tl.load(v_tab + tid), tl.float32, ALIGNED)
    g_ptr = grad_ptr(tl.load(g_tab + tid), GRAD_KIND, ALIGNED)
    keep_ptr = mask_ptr(tl.load(p_tab + tid), MASK_KIND, ALIGNED)  # unused when dense
    if MASK_KIND != 0:
        keep_ptr = mask_ptr(tl.load(mask_tab + tid), MASK_KIND, ALIGNED)
    ss = neg_step_size
    bc2 = bc2_sqrt
    if PER_TENSOR_STEP:  # tensors at different step counts: per-tensor scalars from tables
        ss = tl.load(neg_ss_tab + tid)
        bc2 = tl.load(bc2_tab + tid)
    inv_bc2 = tl.div_rn(tl.cast(1.0, tl.float32), tl.cast(bc2, tl.float32))
    full_end = start + (end - start) // BLOCK * BLOCK
    for off in range(start, full_end, BLOCK):
        _adamw_block(block_offsets(off, BLOCK), end, p_ptr, g_ptr, m_ptr, v_ptr, keep_ptr, ss, bc2, inv_bc2,
                     decay, lerp_coeff, beta2, one_minus_beta2, eps,
                     MASK_KIND, LERP_SMALL, MAXIMIZE, CUDA_ORDER, EMULATE_FMA, False)
    for off in range(full_end, end, BLOCK):
        _adamw_block(block_offsets(off, BLOCK), end, p_ptr, g_ptr, m_ptr, v_ptr, keep_ptr, ss, bc2, inv_bc2,
                     decay, lerp_coeff, beta2, one_minus_beta2, eps,
                     MASK_KIND, LERP_SMALL, MAXIMIZE, CUDA_ORDER, EMULATE_FMA, True)


_kernel = _runtime.jit_tuned(_masked_adamw_kernel, key=["tune_key", "GRAD_KIND", "MASK_KIND", "ALIGNED"])


def _check(params, grads, exp_avgs, exp_avg_sqs, masks) -> None:
    check_lengths([("params", len(params)), ("grads", len(grads)), ("exp_avgs", len(exp_avgs)),
                   ("exp_avg_sqs", len(exp_avg_sqs)), ("masks", len(masks))])
    for i, p in enumerate(params):
        check_param(p, i)
        check_like(grads[i], p, f"grads[{i}]", GRAD_DTYPES)
        check_like(exp_avgs[i], p, f"exp_avgs[{i}]", (torch.float32,))
        check_like(exp_avg_sqs[i], p, f"exp_avg_sqs[{i}]", (torch.float32,))
        check_mask(masks[i], p, i)


def check_steps(steps: Sequence[int]) -> None:
    for i, s in enumerate(steps):
        if int(s) < 1:
            raise ValueError(f"steps[{i}]={s}: the step count includes this step, so it must be >= 1")


def _get_kernel():
    return _kernel  # looked up per launch, so a wrapper patched onto the module is used


def lerp_scalars(beta1: float) -> tuple:
    """torch's lerp: weight w (rounded to fp32) < 0.5 -> m + w*(g-m); else g + (w-1)*(g-m)."""
    w32 = np.float32(1 - beta1)
    lerp_small = bool(abs(w32) < 0.5)
    return lerp_small, (float(w32) if lerp_small else float(w32 - np.float32(1.0)))


class AdamWPlan:
    """A masked AdamW step over a fixed list of tensors, with everything but the step's scalars prepared.

    Why: see :class:`dstrain.kernels.masked_sgd.SGDPlan`.  Per step, :meth:`run` computes the
    scalars (decay, bias corrections) once for all tensors when they share a step
    count, as they do in an optimizer whose tensors all get gradients every step;
    only tensors at different counts need the per-tensor tables (built per step).
    ``flags_key`` holds what selects a kernel variant (beta1's lerp branch, maximize,
    the operation order); the caller rebuilds the plan when it changes.
    """

    def __init__(self, params: Sequence[Tensor], grads: Sequence[Tensor], exp_avgs: Sequence[Tensor],
                 exp_avg_sqs: Sequence[Tensor], masks: Sequence[Optional[Mask]], *, beta1: float,
                 maximize: bool = False, cuda_order: Optional[bool] = None, use_cache: bool = True) -> None:
        _check(params, grads, exp_avgs, exp_avg_sqs, masks)
        lerp_small, _ = lerp_scalars(beta1)
        self.flags_key = (lerp_small, bool(maximize), cuda_order)
        self.stale = False
        self.aligned = [is_aligned([g]) for g in grads]
        self.grad_dtypes = [g.dtype for g in grads]
        keys = [(p.device, GRAD_KINDS[grads[i].dtype], mask_kind(masks[i]),
                 self.aligned[i] and is_aligned([p, exp_avgs[i], exp_avg_sqs[i], mask_storage(masks[i])]))
                for i, p in enumerate(params)]
        chunk = _runtime.chunk_size()
        self.groups: List[LaunchGroup] = []
        for (device, grad_kind, m_kind, aligned), idx in group_indices(keys).items():
            numels = [params[i].numel() for i in idx]
            if sum(numels) == 0:
                continue
            roles = [
                [params[i] for i in idx],
                [grads[i] for i in idx],
                [exp_avgs[i] for i in idx],
                [exp_avg_sqs[i] for i in idx],
                [mask_storage(masks[i]) for i in idx],
            ]
            use_cuda_order = device.type == "cuda" if cuda_order is None else bool(cuda_order)
            tune_key = _runtime.tune_bucket(sum(numels))
            flags = dict(CHUNK=chunk, GRAD_KIND=grad_kind, MASK_KIND=m_kind, LERP_SMALL=lerp_small,
                         PER_TENSOR_STEP=False, MAXIMIZE=bool(maximize), CUDA_ORDER=use_cuda_order,
                         EMULATE_FMA=_runtime.INTERPRET, ALIGNED=aligned, **_runtime.block_kwargs())
            group = LaunchGroup(_get_kernel, ("adamw", str(device), tune_key, grad_kind, m_kind, aligned),
                                idx, roles, numels, chunk, device, flags, use_cache)
            group.no_table = torch.empty(1, dtype=torch.float32, device=device)
            self.groups.append(group)

    def set_grads(self, params: Sequence[Tensor], grads: Sequence[Tensor], moved: Sequence[int],
                  addresses: Sequence[int]) -> bool:
        """As :meth:`dstrain.kernels.masked_sgd.SGDPlan.set_grads`."""
        from .masked_sgd import _set_grads

        return _set_grads(self, params, grads, moved, addresses)

    def run(self, *, step: Optional[int], steps: Optional[Sequence[int]] = None, lr: float, beta1: float,
            beta2: float, eps: float, weight_decay: float) -> None:
        """One step: ``step`` is every tensor's step count (this step included), or pass per-tensor ``steps``."""
        _, lerp_coeff = lerp_scalars(beta1)
        beta2 = float(beta2)
        decay, one_minus_beta2 = 1 - lr * weight_decay, 1 - beta2
        for group in self.groups:
            group_steps = {step} if steps is None else {int(steps[i]) for i in group.indices}
            per_tensor = len(group_steps) > 1
            neg_ss, bc2 = adamw_step_scalars(lr, beta1, beta2, next(iter(group_steps)))
            neg_ss_tab = bc2_tab = group.no_table
            if per_tensor:
                pairs = [adamw_step_scalars(lr, beta1, beta2, int(steps[i])) for i in group.indices]
                tables = torch.tensor(pairs, dtype=torch.float32).t().contiguous().to(group.device)
                neg_ss_tab, bc2_tab = tables[0], tables[1]
            if group.flags["PER_TENSOR_STEP"] != per_tensor:
                group.flags = dict(group.flags, PER_TENSOR_STEP=per_tensor)
            group.launch(neg_ss_tab, bc2_tab, decay, lerp_coeff, beta2, one_minus_beta2, eps, neg_ss, bc2)


def fused_masked_adamw(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    steps: Sequence[int],
    masks: Sequence[Optional[Mask]],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    maximize: bool = False,
    cuda_order: Optional[bool] = None,
) -> None:
    """One masked AdamW step over all ``params`` in a handful of multi-tensor launches.

    Same contract as :func:`dstrain.optim.functional.masked_adamw` (``steps[i]``
    counts this step; the moments must already exist, fp32, shaped like the params).
    Masks: bool/uint8 tensors, :class:`~dstrain.kernels.bitmask.BitMask`, or ``None`` (dense).
    Masked-out elements come out exactly 0 in the parameter and both moments.

    ``cuda_order`` picks which torch backend's operation order to reproduce (see the
    module docstring); default: CUDA order for CUDA tensors, CPU order otherwise.
    (An optimizer stepping the same tensors repeatedly keeps an :class:`AdamWPlan`.)

    Raises ValueError (before touching anything) for non-contiguous tensors and
    dtype/shape/device mismatches, or a step < 1.
    """
    check_lengths([("params", len(params)), ("steps", len(steps))])
    check_steps(steps)
    plan = AdamWPlan(params, grads, exp_avgs, exp_avg_sqs, masks, beta1=beta1, maximize=maximize,
                     cuda_order=cuda_order, use_cache=True)
    uniform = len({int(s) for s in steps}) <= 1
    plan.run(step=int(steps[0]) if uniform and len(steps) else None, steps=None if uniform else steps,
             lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay)
