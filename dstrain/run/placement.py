"""Where a run's tensors live once DeepSpeed holds the model: memory format, buffer dtypes, the frozen teacher.

Why after ``deepspeed.initialize``: DeepSpeed decides the parameters' dtype and, under
ZeRO-1/2 and bf16/fp16, flattens them into its own buffers; layout and dtype choices
made before would be undone or would break its set-up.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn


@torch.no_grad()
def apply_channels_last(module: nn.Module, registry: Any, flattened: bool, backend: str,
                        log: Callable[[str], None]) -> bool:
    """channels_last for 4-D weights where DeepSpeed keeps our parameters; returns whether weights moved.

    Why after ``deepspeed.initialize``: DeepSpeed 0.19.8's ``_broadcast_model`` views every
    parameter as bytes and raises on channels-last weights ("stride(-1) must be 1");
    converting afterwards works with every version.  Why only there: under ZeRO-1/2 and
    bf16/fp16 DeepSpeed makes the weights contiguous views of one flat buffer, which
    cannot be channels-last; there only the inputs (so the activations) are.
    ``setattr .data`` keeps each Parameter object, so the optimizer, the mask registry and
    DeepSpeed's references still point at the trained tensors.
    """
    if flattened:
        log("channels_last: inputs only; DeepSpeed keeps the weights as contiguous views of its "
            "flat buffers under ZeRO-1/2 and bf16/fp16 (see docs/deepspeed.md)")
        return False
    if backend == "triton":  # the Triton kernels address flat, contiguous memory
        log("channels_last: inputs only; optimizer.backend triton steps contiguous weights (see docs/deepspeed.md)")
        return False
    for param in module.parameters():
        if param.dim() == 4:
            param.data = param.data.contiguous(memory_format=torch.channels_last)
    registry.follow_param_layouts()
    return True


def match_buffer_dtype(module: nn.Module, device: torch.device) -> None:
    """DeepSpeed casts parameters, not buffers, to bf16/fp16; CPU batch_norm needs them to agree."""
    dtype = next(module.parameters()).dtype
    if device.type != "cpu" or dtype == torch.float32:
        return
    for sub in module.modules():
        for name, buf in sub.named_buffers(recurse=False):
            if buf.is_floating_point() and buf.dtype != dtype:
                setattr(sub, name, buf.to(dtype))


def frozen_teacher(teacher: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """The distillation teacher on the student's device and dtype, in eval mode, with no gradients.

    ``requires_grad=False`` keeps any optimizer or ZeRO partitioner from picking its
    parameters up; eval mode turns dropout off for its whole life (the trainer never
    calls ``.train()`` on it).
    """
    teacher = teacher.to(device=device, dtype=dtype).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher
