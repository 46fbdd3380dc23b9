"""Argument checks shared by the fused optimizers.

The kernels address memory through raw pointers and flat offsets, so a
non-contiguous view, a wrong dtype or a shape mismatch would not fail: it would
silently update the wrong elements.  Every check therefore raises a ValueError
that names the argument, its index in the list, and the fix.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from ._runtime import check_device
from .bitmask import BITS_PER_WORD, BitMask, Mask

GRAD_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_lengths(name_lengths: Sequence[tuple]) -> None:
    """All per-parameter lists must be as long as ``params``."""
    (ref_name, ref_len) = name_lengths[0]
    for name, n in name_lengths[1:]:
        if n != ref_len:
            raise ValueError(f"{name} has {n} entries but {ref_name} has {ref_len}; pass one per parameter")


def _contiguous(t: Tensor, name: str) -> None:
    if not t.is_contiguous():
        raise ValueError(f"{name} is not contiguous (shape {tuple(t.shape)}, stride {t.stride()}); "
                         "the fused kernels index flat memory: call .contiguous() on it first")


def check_param(p: Tensor, i: int) -> None:
    name = f"params[{i}]"
    if not isinstance(p, Tensor):
        raise ValueError(f"{name} is a {type(p).__name__}, expected a torch.Tensor")
    if p.dtype != torch.float32:
        raise ValueError(f"{name} has dtype {p.dtype}; the fused kernels update fp32 (master) weights: "
                         "keep fp32 params or use backend='torch'")
    check_device(p, name)
    _contiguous(p, name)


def check_like(t: Tensor, p: Tensor, name: str, dtypes: Sequence[torch.dtype]) -> None:
    """``t`` must share ``p``'s device and shape, be contiguous and have one of ``dtypes``."""
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} is a {type(t).__name__}, expected a torch.Tensor")
    if t.device != p.device:
        raise ValueError(f"{name} is on {t.device} but its parameter is on {p.device}; move it with .to({str(p.device)!r})")
    if t.shape != p.shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)} but its parameter has shape {tuple(p.shape)}")
    if t.dtype not in dtypes:
        raise ValueError(f"{name} has dtype {t.dtype}; expected one of {[str(d) for d in dtypes]}: convert it with .to()")
    _contiguous(t, name)


def check_mask(mask: Optional[Mask], p: Tensor, i: int) -> None:
    name = f"masks[{i}]"
    if mask is None:
        return
    if isinstance(mask, BitMask):
        w = mask.words
        if w.dtype != torch.int32 or w.dim() != 1:
            raise ValueError(f"{name}.words must be a 1-D int32 tensor (got {w.dtype}, {w.dim()}-D); build it with pack_mask()")
        if w.device != p.device:
            raise ValueError(f"{name} is on {w.device} but its parameter is on {p.device}; use mask.to({str(p.device)!r})")
        if mask.numel != p.numel() or w.numel() * BITS_PER_WORD < p.numel():
            raise ValueError(f"{name} packs {mask.numel} bits ({w.numel()} words) but its parameter has "
                             f"{p.numel()} elements; pack_mask() the parameter's own bool mask")
        _contiguous(w, f"{name}.words")
        return
    check_like(mask, p, name, (torch.bool, torch.uint8))
