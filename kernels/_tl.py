"""Small ``@triton.jit`` helpers shared by the optimizer kernels."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

GRAD_KINDS = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
"""Gradient dtype -> the GRAD_KIND constexpr (pointer element type chosen at compile time)."""


@triton.jit
def fma(a, b, c, EMULATE: tl.constexpr):
    """``a * b + c`` rounded once, like torch's ``add(alpha=)``, ``lerp`` and ``addcmul``.

    On a GPU this is ``tl.fma``.  The interpreter evaluates ``tl.fma`` as a rounded
    multiply then add, so there (EMULATE) it is computed in float64 and rounded to
    float32: the product of two fp32 numbers is exact in fp64, leaving one fp64 and
    one fp32 rounding, which differ from a true FMA only in vanishingly rare
    double-rounding cases.
    """
    if EMULATE:
        r = (tl.cast(a, tl.float64) * tl.cast(b, tl.float64) + tl.cast(c, tl.float64)).to(tl.float32)
    else:
        r = tl.fma(a, b, c)
    return r


@triton.jit
def load_grad(addr, offs, inb, GRAD_KIND: tl.constexpr):
    """Load a gradient block through a raw address and upcast it to fp32."""
    if GRAD_KIND == 0:
        g = tl.load(addr.to(tl.pointer_type(tl.float32)) + offs, mask=inb, other=0.0)
    elif GRAD_KIND == 1:
        g = tl.load(addr.to(tl.pointer_type(tl.bfloat16)) + offs, mask=inb, other=0.0).to(tl.float32)
    else:
        g = tl.load(addr.to(tl.pointer_type(tl.float16)) + offs, mask=inb, other=0.0).to(tl.float32)
    return g


@triton.jit
def load_keep(addr, offs, inb, MASK_KIND: tl.constexpr):
    """Which elements survive: byte mask (MASK_KIND 1) or packed int32 bitmask (MASK_KIND 2)."""
    if MASK_KIND == 1:
        keep = tl.load(addr.to(tl.pointer_type(tl.uint8)) + offs, mask=inb, other=0) != 0
    else:
        words = tl.load(addr.to(tl.pointer_type(tl.int32)) + (offs >> 5), mask=inb, other=0)
        keep = ((words >> (offs & 31).to(tl.int32)) & 1) != 0
    return keep
