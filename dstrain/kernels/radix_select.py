"""Exact k-th smallest |w| over many tensors by radix select, in plain torch.

Why radix select: for non-negative IEEE floats the bit pattern, read as an integer,
is ordered like the value.  So the k-th smallest |w| can be found digit by digit:
histogram the top digit of every element's bits, find the bucket where the running
count reaches ``k``, keep only that bucket and repeat with the next digit.  Four
passes of 8/8/8/7 bits pin down all 31 bits of a non-negative fp32.  Each pass is
one streaming read of the weights, so a global threshold costs ~4 reads instead of a
sort or ``topk`` over all parameters, and no concatenated copy of the model is made.

The result equals ``torch.kthvalue`` over the concatenated ``|w|.float()``
exactly, ties and zeros included (the answer is a value, so ties need no special
handling; ``-0.0`` and ``+0.0`` both have magnitude bits 0).

This module has no Triton dependency: it is the CPU path and the fallback, and it
holds the pieces :mod:`dstrain.kernels.select` (the Triton histogram version) shares.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import torch
from torch import Tensor

HistReduce = Optional[Callable[[Tensor], None]]
"""Sums a pass's histogram in place over every process holding a share of the tensors (an
all-reduce), so that several ranks select the k-th smallest of their union; None: one process."""

PASSES: Tuple[Tuple[int, int], ...] = ((23, 8), (15, 8), (7, 8), (0, 7))
"""(shift, width) of each digit, most significant first; together bits 0..30 of |w|."""


def check_select_inputs(tensors: Sequence[Tensor], k: int) -> int:
    """Total element count; ValueError for bad k or mixed devices."""
    try:
        integral = not isinstance(k, bool) and int(k) == k
    except (TypeError, ValueError):
        integral = False
    if not integral:
        raise ValueError(f"k={k!r} must be an integer (1-based rank)")
    total = sum(int(t.numel()) for t in tensors)
    if not 1 <= int(k) <= total:
        raise ValueError(f"k={k} is out of range: it must be in [1, {total}] (1-based, over all "
                         f"{len(tensors)} tensors' elements)")
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        raise ValueError(f"tensors are on several devices {sorted(map(str, devices))}; move them to one device")
    return total


def magnitude_bits(t: Tensor) -> Tensor:
    """|t| as fp32, reinterpreted as int32 (sign bit 0, so ordered like the value)."""
    return t.detach().reshape(-1).float().abs().view(torch.int32)


def pick_digit(hist: Tensor, k: int) -> Tuple[int, int]:
    """Bucket holding the k-th smallest element, and k's rank within that bucket."""
    cum = hist.to(torch.int64).cumsum(0).cpu()
    digit = int(torch.searchsorted(cum, torch.tensor([k], dtype=torch.int64))[0])
    below = int(cum[digit - 1]) if digit > 0 else 0
    return digit, k - below


def bits_to_float(bits: int) -> float:
    return float(torch.tensor([bits], dtype=torch.int32).view(torch.float32)[0])


def kth_smallest_abs_torch(tensors: Sequence[Tensor], k: int, reduce: HistReduce = None) -> float:
    """Radix select in plain torch (bincount per tensor per pass); exact, any device.

    With ``reduce``, ``tensors`` are this process's share and ``k`` ranks the union of all shares.
    """
    if reduce is None:
        check_select_inputs(tensors, k)
    k = int(k)
    prefix = 0
    for level, (shift, width) in enumerate(PASSES):
        n_bins = 1 << width
        hist = None
        for t in tensors:
            bits = magnitude_bits(t)
            if level > 0:
                bits = bits[(bits >> (shift + width)) == prefix]
            h = torch.bincount((bits >> shift) & (n_bins - 1), minlength=n_bins)
            hist = h if hist is None else hist + h
        if hist is None:  # a share with no tensors
            hist = torch.zeros(n_bins, dtype=torch.int64)
        if reduce is not None:
            reduce(hist)
        digit, k = pick_digit(hist, k)
        prefix = (prefix << width) | digit
    return bits_to_float(prefix)
