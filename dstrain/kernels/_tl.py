"""Small ``@triton.jit`` helpers shared by the kernels.

Why the loads go through ``typed_ptr``/``load_block``: every multi-tensor kernel
gets its tensors as raw int64 addresses, so the compiler knows nothing about their
alignment, and a ``mask=offs < end`` with an unknown ``end`` has no known constancy
either.  Either unknown makes Triton fall back to one 32-bit load per element.  The
kernels therefore walk each chunk in full blocks loaded *without* a mask, then one
masked tail block, and tell the compiler what the host has checked: the block
offset is a multiple of 16 elements (chunks start at multiples of CHUNK, a multiple
of BLOCK) and, when ``ALIGNED``, every base address is a multiple of 16 bytes
(:func:`dstrain.kernels.multi_tensor.is_aligned`).  With both, full blocks compile to
128-bit loads and stores (``tests/test_kernels_compile.py`` checks the PTX).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

GRAD_KINDS = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
"""Gradient dtype -> the GRAD_KIND constexpr (pointer element type chosen at compile time)."""

ALIGN_BYTES = 16
"""Base-address alignment the ``ALIGNED`` kernels assume: one 128-bit vector."""


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
def typed_ptr(addr, DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
    """A raw int64 address as a ``DTYPE`` pointer, declared 16-byte aligned when the host checked it."""
    ptr = addr.to(tl.pointer_type(DTYPE))
    if ALIGNED:
        ptr = tl.multiple_of(ptr, 16)
    return ptr


@triton.jit
def grad_ptr(addr, GRAD_KIND: tl.constexpr, ALIGNED: tl.constexpr):
    """The gradient's pointer; its element type (fp32/bf16/fp16) is the GRAD_KIND constexpr."""
    return typed_ptr(addr, tl.float32 if GRAD_KIND == 0 else (tl.bfloat16 if GRAD_KIND == 1 else tl.float16),
                     ALIGNED)


@triton.jit
def mask_ptr(addr, MASK_KIND: tl.constexpr, ALIGNED: tl.constexpr):
    """Byte mask (MASK_KIND 1: uint8 elements) or packed bitmask (MASK_KIND 2: int32 words)."""
    return typed_ptr(addr, tl.int32 if MASK_KIND == 2 else tl.uint8, ALIGNED)


@triton.jit
def block_offsets(off, BLOCK: tl.constexpr):
    """``off + [0, BLOCK)``; callers guarantee ``off`` is a multiple of BLOCK (hence of 16)."""
    return tl.multiple_of(off + tl.arange(0, BLOCK), 16)


@triton.jit
def load_block(ptr, offs, end, MASKED: tl.constexpr):
    """``ptr[offs]``; only the tail block (MASKED) pays for a bounds mask."""
    if MASKED:
        x = tl.load(ptr + offs, mask=offs < end, other=0)
    else:
        x = tl.load(ptr + offs)
    return x


@triton.jit
def store_block(ptr, offs, end, x, MASKED: tl.constexpr):
    if MASKED:
        tl.store(ptr + offs, x, mask=offs < end)
    else:
        tl.store(ptr + offs, x)


@triton.jit
def load_keep(ptr, offs, end, MASK_KIND: tl.constexpr, MASKED: tl.constexpr):
    """Which elements survive, from a ``mask_ptr`` pointer."""
    if MASK_KIND == 1:
        keep = load_block(ptr, offs, end, MASKED) != 0
    else:
        if MASKED:
            words = tl.load(ptr + (offs >> 5), mask=offs < end, other=0)
        else:
            words = tl.load(ptr + (offs >> 5))
        keep = ((words >> (offs & 31).to(tl.int32)) & 1) != 0
    return keep
