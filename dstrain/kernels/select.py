"""Exact k-th smallest |w| with Triton histogram kernels, and the public dispatcher.

Same radix-select algorithm as :mod:`dstrain.kernels.radix_select` (read its docstring for
why it is exact): one multi-tensor Triton launch per digit pass; each program
histograms its chunk in registers with ``tl.histogram`` and adds the result to a
global int32 histogram with one atomic per non-empty bin.  Compiled on CUDA
tensors; for testing, it also runs under ``TRITON_INTERPRET=1`` on CPU tensors.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _runtime
from ._tl import GRAD_KINDS, block_offsets, grad_ptr, load_block
from .multi_tensor import build_work_list, is_aligned
from .radix_select import (
    PASSES,
    HistReduce,
    bits_to_float,
    check_select_inputs,
    kth_smallest_abs_torch,
    pick_digit,
)

_HIST_BLOCK_GPU = 1024
_MAX_TRITON_ELEMENTS = 2**31 - 1  # int32 histogram counts


@triton.jit
def _hist_block(x_ptr, offs, end, prefix, SHIFT: tl.constexpr, WIDTH: tl.constexpr, FILTER: tl.constexpr,
                MASKED: tl.constexpr):
    """This block's histogram of the digit, counting only selected elements.

    Excluded elements (out of bounds, or with other high bits under FILTER) are
    binned as 0 and subtracted from bin 0, which avoids relying on
    ``tl.histogram``'s optional mask argument.
    """
    N_BINS: tl.constexpr = 1 << WIDTH
    x = load_block(x_ptr, offs, end, MASKED).to(tl.float32)
    bits = tl.abs(x).to(tl.int32, bitcast=True)
    sel = offs < end
    if FILTER:
        sel = sel & ((bits >> (SHIFT + WIDTH)) == prefix)
    digit = tl.where(sel, (bits >> SHIFT) & (N_BINS - 1), 0)
    excluded = offs.shape[0] - tl.sum(sel.to(tl.int32), axis=0)
    return tl.histogram(digit, N_BINS) - tl.where(tl.arange(0, N_BINS) == 0, excluded, 0)


@triton.jit
def _radix_hist_kernel(work_tid, work_start, numels, x_tab, hist, prefix,
                       CHUNK: tl.constexpr, BLOCK: tl.constexpr, X_KIND: tl.constexpr,
                       SHIFT: tl.constexpr, WIDTH: tl.constexpr, FILTER: tl.constexpr, ALIGNED: tl.constexpr):
    """Add this work item's histogram of digit ``(bits >> SHIFT) & (2**WIDTH - 1)`` to ``hist``.

    With FILTER, only elements whose higher bits equal ``prefix`` are counted.
    Full blocks are read unmasked, then the tail (see :mod:`dstrain.kernels._tl`).
    """
    N_BINS: tl.constexpr = 1 << WIDTH
    w = tl.program_id(0)
    tid = tl.load(work_tid + w)
    start = tl.load(work_start + w)
    end = tl.minimum(start + CHUNK, tl.load(numels + tid))
    x_ptr = grad_ptr(tl.load(x_tab + tid), X_KIND, ALIGNED)
    acc = tl.zeros([N_BINS], dtype=tl.int32)
    full_end = start + (end - start) // BLOCK * BLOCK
    for off in range(start, full_end, BLOCK):
        acc += _hist_block(x_ptr, block_offsets(off, BLOCK), end, prefix, SHIFT, WIDTH, FILTER, False)
    for off in range(full_end, end, BLOCK):
        acc += _hist_block(x_ptr, block_offsets(off, BLOCK), end, prefix, SHIFT, WIDTH, FILTER, True)
    tl.atomic_add(hist + tl.arange(0, N_BINS), acc, mask=acc != 0)


def kth_smallest_abs_triton(tensors: Sequence[Tensor], k: int, reduce: HistReduce = None) -> float:
    """Radix select with Triton histogram kernels (one multi-tensor launch per pass).

    fp32/bf16/fp16 tensors; they are made contiguous (a copy) if needed, since the
    kernel reads flat memory.  CUDA tensors compiled; CPU tensors under the interpreter.
    """
    total = check_select_inputs(tensors, k) if reduce is None else sum(int(t.numel()) for t in tensors)
    if total > _MAX_TRITON_ELEMENTS:
        return kth_smallest_abs_torch(tensors, k, reduce)
    k = int(k)
    device = tensors[0].device
    xs: List[Tensor] = []
    for i, t in enumerate(tensors):
        if t.dtype not in GRAD_KINDS:
            raise ValueError(f"tensors[{i}] has dtype {t.dtype}; the Triton selector reads fp32/bf16/fp16 "
                             "(use kth_smallest_abs_torch)")
        _runtime.check_device(t, f"tensors[{i}]")
        xs.append(t.detach().contiguous())
    groups = {}
    for x in xs:
        if x.numel():
            groups.setdefault((GRAD_KINDS[x.dtype], is_aligned([x])), []).append(x)
    chunk = _runtime.chunk_size()
    block = _runtime.INTERP_BLOCK if _runtime.INTERPRET else _HIST_BLOCK_GPU
    launch_opts = {} if _runtime.INTERPRET else {"num_warps": 4}
    work = {key: build_work_list([group], [x.numel() for x in group], chunk, device)
            for key, group in groups.items()}
    prefix = 0
    for level, (shift, width) in enumerate(PASSES):
        hist = torch.zeros(1 << width, dtype=torch.int32, device=device)
        for (kind, aligned), wl in work.items():
            _radix_hist_kernel[(wl.n_work,)](
                wl.work_tid, wl.work_start, wl.numels, wl.tables[0], hist, prefix,
                CHUNK=chunk, BLOCK=block, X_KIND=kind, SHIFT=shift, WIDTH=width, FILTER=level > 0, ALIGNED=aligned,
                **launch_opts)
        if reduce is not None:
            reduce(hist)
        digit, k = pick_digit(hist, k)
        prefix = (prefix << width) | digit
    return bits_to_float(prefix)


def kth_smallest_abs(tensors: Sequence[Tensor], k: int, reduce: HistReduce = None) -> float:
    """Exact k-th smallest ``|w|`` (1-based) over all elements of ``tensors``.

    Equals ``torch.kthvalue(torch.cat([t.reshape(-1).abs().float() for t in tensors]), k)``
    without building that concatenation or sorting it.  Triton histograms for CUDA
    fp32/bf16/fp16 tensors; the same algorithm in torch otherwise.  ValueError if
    ``k`` is not in ``[1, total elements]`` or the tensors span several devices.  With
    ``reduce`` (an in-place all-reduce of each pass's histogram) the tensors are this
    process's share and ``k`` ranks the union of every process's share (ZeRO-3 partitions).
    """
    if reduce is None:
        check_select_inputs(tensors, k)
    if (tensors and not _runtime.INTERPRET and tensors[0].is_cuda
            and all(t.dtype in GRAD_KINDS for t in tensors)):
        return kth_smallest_abs_triton(tensors, k, reduce)
    return kth_smallest_abs_torch(tensors, k, reduce)
