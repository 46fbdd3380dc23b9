"""kth_smallest_abs (radix select) vs torch.kthvalue: both the torch path and the
Triton histogram path (interpreted on the CPU here)."""
from __future__ import annotations

import pytest
import torch

from dstrain import kernels
from dstrain.kernels import (
    kth_smallest_abs,
    kth_smallest_abs_torch,
    kth_smallest_abs_triton,
)
from dstrain.sparsity.magnitude import masks_below_threshold, torch_kth_smallest_abs

SELECTORS = {"dispatch": kth_smallest_abs, "torch": kth_smallest_abs_torch, "triton": kth_smallest_abs_triton}


def _reference(tensors, k: int) -> float:
    flat = torch.cat([t.reshape(-1).abs().float() for t in tensors])
    return float(torch.kthvalue(flat, k).values)


def _tensors_with_ties(seed: int):
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randint(-6, 7, (37,), generator=gen).float() * 0.25,  # many ties, zeros, negatives
        torch.randn(300, generator=gen),
        torch.zeros(3),
        torch.empty(0),
        torch.randn(129, generator=gen).to(torch.bfloat16),  # ties after rounding
        torch.tensor([-0.0, 1e-40, -1e-40, float("inf")]),  # -0, subnormals, inf
        torch.randn(5, 7, generator=gen).t(),  # non-contiguous input is fine for selection
        torch.randn(301, generator=gen)[1:],  # contiguous but off a 16-byte boundary: unaligned variant
    ]


@pytest.mark.parametrize("name", list(SELECTORS))
def test_matches_kthvalue_with_ties(name):
    select = SELECTORS[name]
    tensors = _tensors_with_ties(0)
    total = sum(t.numel() for t in tensors)
    gen = torch.Generator().manual_seed(1)
    ks = [1, 2, 10, 20, total // 2, int(0.9 * total), total - 1, total] + \
        torch.randint(1, total + 1, (4,), generator=gen).tolist()
    for k in ks:
        assert select(tensors, k) == _reference(tensors, k), f"k={k}"


def test_all_equal_and_fp16():
    tensors = [torch.full((50,), -0.5), torch.full((20,), 0.5, dtype=torch.float16)]
    for k in (1, 35, 70):
        for select in SELECTORS.values():
            assert select(tensors, k) == 0.5


@pytest.mark.parametrize("name", list(SELECTORS))
@pytest.mark.parametrize("k", [0, -1, 11, 2.5, True])
def test_k_out_of_range_or_not_integer(name, k):
    tensors = [torch.randn(4), torch.randn(6)]
    with pytest.raises(ValueError, match=r"k=.*(out of range|must be an integer)"):
        SELECTORS[name](tensors, k)


def test_empty_input_rejected():
    with pytest.raises(ValueError, match=r"out of range: it must be in \[1, 0\]"):
        kth_smallest_abs([torch.empty(0)], 1)


def test_pruning_masks_identical_with_radix_selector():
    """dstrain.sparsity.magnitude picks the same masks (ties included) with this selector as with kthvalue."""
    gen = torch.Generator().manual_seed(2)
    tensors = [torch.randint(-4, 5, (6, 5), generator=gen).float(), torch.randint(-4, 5, (17,), generator=gen).float()]
    k = 30
    want = masks_below_threshold(tensors, k, torch_kth_smallest_abs)
    got = masks_below_threshold(tensors, k, kernels.kth_smallest_abs_triton)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    assert sum(int((~m).sum()) for m in got) == k
