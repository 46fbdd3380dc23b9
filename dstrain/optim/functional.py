"""Functional core of the masked optimizers (the PyTorch reference path).

The update for every element is computed exactly as ``torch.optim.SGD`` /
``torch.optim.AdamW`` (single-tensor, ``foreach=False``) compute it; afterwards,
elements whose mask is ``False`` are written as exact zeros in the parameter *and*
in every state buffer.  Zeroing the outputs (instead of the inputs) is what lets a
fused kernel do the whole thing in one pass, and it is why a pruned weight can
never be revived by stale momentum: its momentum is zero too.

``masks[i] is None`` means "dense" for that tensor (not prunable, or a
decompressed phase).  The Triton kernels in :mod:`dstrain.kernels` must reproduce these
functions to fp32 rounding.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import Tensor

from dstrain.kernels.adamw_scalars import adamw_step_scalars


def _zero_pruned(mask: Optional[Tensor], *tensors: Tensor) -> None:
    """Write +0.0 where ``mask`` is False.

    ``torch.where(..., out=t)`` rather than ``t.mul_(mask)``: multiplying by a bool mask
    converts it to float on every call (2.3x slower on CPU, measured on 25M elements),
    and where() also writes +0.0 like the Triton kernels and keeps NaN out.
    """
    if mask is None:
        return
    zero = tensors[0].new_zeros(())
    for t in tensors:
        torch.where(mask, t, zero, out=t)


def _as_param_dtype(grad: Tensor, param: Tensor, maximize: bool) -> Tensor:
    """Low-precision grads (bf16/fp16) update fp32 master weights in fp32."""
    if grad.dtype != param.dtype:
        grad = grad.to(param.dtype)
    return -grad if maximize else grad


def masked_sgd(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    momentum_buffers: List[Optional[Tensor]],
    masks: Sequence[Optional[Tensor]],
    *,
    lr: float,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    maximize: bool = False,
) -> None:
    """One SGD(-momentum) step; ``momentum_buffers`` entries are created in place on first use."""
    for i, param in enumerate(params):
        grad = _as_param_dtype(grads[i], param, maximize)
        if weight_decay != 0:
            grad = grad.add(param, alpha=weight_decay)
        if momentum != 0:
            buf = momentum_buffers[i]
            if buf is None:
                buf = torch.clone(grad).detach()
                momentum_buffers[i] = buf
            else:
                buf.mul_(momentum).add_(grad, alpha=1 - dampening)
            grad = grad.add(buf, alpha=momentum) if nesterov else buf
        param.add_(grad, alpha=-lr)
        if momentum != 0:
            _zero_pruned(masks[i], param, momentum_buffers[i])
        else:
            _zero_pruned(masks[i], param)


def masked_adamw(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    steps: Sequence[int],
    masks: Sequence[Optional[Tensor]],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    maximize: bool = False,
) -> None:
    """One AdamW step (decoupled decay, bias correction, no amsgrad).

    ``steps[i]`` is the step count *including* this step (1 on the first call).
    """
    for i, param in enumerate(params):
        grad = _as_param_dtype(grads[i], param, maximize)
        exp_avg, exp_avg_sq, step = exp_avgs[i], exp_avg_sqs[i], steps[i]
        param.mul_(1 - lr * weight_decay)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        neg_step_size, bias_correction2_sqrt = adamw_step_scalars(lr, beta1, beta2, step)
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        param.addcdiv_(exp_avg, denom, value=neg_step_size)
        _zero_pruned(masks[i], param, exp_avg, exp_avg_sq)
