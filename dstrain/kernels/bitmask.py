"""Packed masks: one bit per weight, so the mask costs 1/32 of the fp32 weight traffic instead of 1/4.

Layout (what the kernels assume): element ``i`` of the flattened tensor is bit
``i % 32`` (least significant first) of int32 word ``i // 32``.  The last word is
zero-padded.  int32 rather than uint8 words so a kernel reads one aligned word per
32 weights; signed because torch has no uint32 arithmetic on every device (the
kernels mask with ``& 1`` after shifting, so sign extension does not matter).

A packed mask is wrapped in :class:`BitMask` so it can never be mistaken for a byte
mask (an int32 tensor with ``ceil(n/32)`` elements has no shape relation to its
parameter).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

BITS_PER_WORD = 32


@dataclass(frozen=True)
class BitMask:
    """A packed bool mask: ``words`` (int32, contiguous, 1-D) and the shape it unpacks to."""

    words: Tensor
    shape: Tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def device(self) -> torch.device:
        return self.words.device

    def to(self, device: Union[str, torch.device]) -> "BitMask":
        return BitMask(self.words.to(device), self.shape)


Mask = Union[Tensor, BitMask]
"""What the fused optimizers accept per parameter: a bool/uint8 tensor shaped like it, or a BitMask."""

_SHIFTS_CACHE: dict = {}


def _bit_weights(device: torch.device) -> Tensor:
    w = _SHIFTS_CACHE.get(device)
    if w is None:
        w = torch.ones(BITS_PER_WORD, dtype=torch.int64, device=device) << torch.arange(
            BITS_PER_WORD, dtype=torch.int64, device=device)
        _SHIFTS_CACHE[device] = w
    return w


def pack_mask(mask: Tensor) -> BitMask:
    """Pack a bool (or 0/1 uint8) tensor into a :class:`BitMask` on the same device."""
    if mask.dtype not in (torch.bool, torch.uint8):
        raise ValueError(f"pack_mask: mask dtype {mask.dtype}; pass a bool or uint8 tensor")
    flat = mask.reshape(-1).to(torch.int64) != 0
    n = flat.numel()
    n_words = (n + BITS_PER_WORD - 1) // BITS_PER_WORD
    padded = torch.zeros(n_words * BITS_PER_WORD, dtype=torch.int64, device=mask.device)
    padded[:n] = flat.to(torch.int64)
    words = (padded.view(n_words, BITS_PER_WORD) * _bit_weights(mask.device)).sum(dim=1)
    # Reinterpret the low 32 bits as signed int32 (two's complement) without relying on
    # how a narrowing cast of out-of-range values behaves.
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    return BitMask(words.contiguous(), tuple(mask.shape))


def unpack_mask(bitmask: BitMask, shape: Optional[Tuple[int, ...]] = None) -> Tensor:
    """The bool tensor a :class:`BitMask` encodes (``shape`` overrides the stored shape)."""
    shape = tuple(shape) if shape is not None else bitmask.shape
    n = 1
    for s in shape:
        n *= s
    if n > bitmask.words.numel() * BITS_PER_WORD:
        raise ValueError(f"unpack_mask: {bitmask.words.numel()} words cannot hold {n} bits (shape {shape})")
    bits = (bitmask.words.to(torch.int64).unsqueeze(1) & _bit_weights(bitmask.words.device)) != 0
    return bits.reshape(-1)[:n].reshape(shape)


def mask_kind(mask: Optional[Mask]) -> int:
    """0: dense (None); 1: byte mask (bool/uint8); 2: packed BitMask. A constexpr of the kernels."""
    if mask is None:
        return 0
    if isinstance(mask, BitMask):
        return 2
    return 1


def mask_storage(mask: Optional[Mask]) -> Optional[Tensor]:
    """The tensor whose memory a kernel reads for this mask."""
    if mask is None:
        return None
    return mask.words if isinstance(mask, BitMask) else mask
