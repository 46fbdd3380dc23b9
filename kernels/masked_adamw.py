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

import math
from typing import Optional, Sequence

import numpy as np
import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _runtime
from ._tl import (GRAD_KINDS, block_offsets, fma, grad_ptr, load_block, load_keep, mask_ptr, store_block,
                  typed_ptr)
from .bitmask import Mask, mask_kind, mask_storage
from .multi_tensor import build_work_list, group_indices, is_aligned
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


def _step_scalars(lr: float, beta1: float, beta2: float, step: int) -> tuple:
    """(-step_size, sqrt(bias_correction2)) in double precision, exactly as the reference computes them."""
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    return -(lr / bias_correction1), math.sqrt(bias_correction2)


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
    Masks: bool/uint8 tensors, :class:`~kernels.bitmask.BitMask`, or ``None`` (dense).
    Masked-out elements come out exactly 0 in the parameter and both moments.

    ``cuda_order`` picks which torch backend's operation order to reproduce (see the
    module docstring); default: CUDA order for CUDA tensors, CPU order otherwise.

    Raises ValueError (before touching anything) for non-contiguous tensors and
    dtype/shape/device mismatches, or a step < 1.
    """
    check_lengths([("params", len(params)), ("grads", len(grads)), ("exp_avgs", len(exp_avgs)),
                   ("exp_avg_sqs", len(exp_avg_sqs)), ("steps", len(steps)), ("masks", len(masks))])
    for i, p in enumerate(params):
        check_param(p, i)
        check_like(grads[i], p, f"grads[{i}]", GRAD_DTYPES)
        check_like(exp_avgs[i], p, f"exp_avgs[{i}]", (torch.float32,))
        check_like(exp_avg_sqs[i], p, f"exp_avg_sqs[{i}]", (torch.float32,))
        check_mask(masks[i], p, i)
        if int(steps[i]) < 1:
            raise ValueError(f"steps[{i}]={steps[i]}: the step count includes this step, so it must be >= 1")

    # torch's lerp: weight w (rounded to fp32) < 0.5 -> m + w*(g-m); else g + (w-1)*(g-m).
    w32 = np.float32(1 - beta1)
    lerp_small = bool(abs(w32) < 0.5)
    lerp_coeff = float(w32) if lerp_small else float(w32 - np.float32(1.0))
    decay = 1 - lr * weight_decay
    beta2 = float(beta2)
    one_minus_beta2 = 1 - beta2

    keys = [(p.device, GRAD_KINDS[grads[i].dtype], mask_kind(masks[i]),
             is_aligned([p, grads[i], exp_avgs[i], exp_avg_sqs[i], mask_storage(masks[i])]))
            for i, p in enumerate(params)]
    chunk = _runtime.chunk_size()
    for (device, grad_kind, m_kind, aligned), idx in group_indices(keys).items():
        numels = [params[i].numel() for i in idx]
        if sum(numels) == 0:
            continue
        group_steps = {int(steps[i]) for i in idx}
        per_tensor = len(group_steps) > 1
        neg_ss, bc2 = _step_scalars(lr, beta1, beta2, next(iter(group_steps)))
        roles = [
            [params[i] for i in idx],
            [grads[i] for i in idx],
            [exp_avgs[i] for i in idx],
            [exp_avg_sqs[i] for i in idx],
            [mask_storage(masks[i]) for i in idx],
        ]
        if per_tensor:
            pairs = [_step_scalars(lr, beta1, beta2, int(steps[i])) for i in idx]
            tables = torch.tensor(pairs, dtype=torch.float32).t().contiguous().to(device)
            neg_ss_tab, bc2_tab = tables[0], tables[1]
        else:
            neg_ss_tab = bc2_tab = torch.empty(1, dtype=torch.float32, device=device)
        use_cuda_order = device.type == "cuda" if cuda_order is None else bool(cuda_order)
        tune_key = _runtime.tune_bucket(sum(numels))
        flags = dict(CHUNK=chunk, GRAD_KIND=grad_kind, MASK_KIND=m_kind, LERP_SMALL=lerp_small,
                     PER_TENSOR_STEP=per_tensor, MAXIMIZE=bool(maximize), CUDA_ORDER=use_cuda_order,
                     EMULATE_FMA=_runtime.INTERPRET, ALIGNED=aligned, **_runtime.block_kwargs())
        scalars = (decay, lerp_coeff, beta2, one_minus_beta2, eps, neg_ss, bc2, tune_key)

        def launch(scratch: bool, roles=roles, numels=numels, device=device, flags=flags, scalars=scalars,
                   neg_ss_tab=neg_ss_tab, bc2_tab=bc2_tab) -> None:
            if scratch:  # autotuning run on copies: see _runtime.launch_tuned
                roles = [[None if t is None else t.clone() for t in role] for role in roles]
            wl = build_work_list(roles, numels, chunk, device, use_cache=not scratch)
            _kernel[(wl.n_work,)](wl.work_tid, wl.work_start, wl.numels, *wl.tables, neg_ss_tab, bc2_tab,
                                  *scalars, **flags)

        _runtime.launch_tuned(("adamw", str(device), tune_key, grad_kind, m_kind, aligned), launch)
