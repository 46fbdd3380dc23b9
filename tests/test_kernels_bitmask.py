"""pack_mask / unpack_mask: the packed layout the kernels read (bit i%32 of int32 word i//32)."""
from __future__ import annotations

import pytest
import torch

from dstrain.kernels import BitMask, pack_mask, unpack_mask


@pytest.mark.parametrize("shape", [(0,), (1,), (31,), (32,), (33,), (3, 5, 7), (64, 2)])
def test_round_trip(shape):
    m = torch.rand(shape, generator=torch.Generator().manual_seed(0)) > 0.5
    packed = pack_mask(m)
    assert packed.words.dtype == torch.int32
    assert packed.words.numel() == (m.numel() + 31) // 32
    assert packed.shape == tuple(shape)
    assert torch.equal(unpack_mask(packed), m)
    assert torch.equal(pack_mask(m.to(torch.uint8)).words, packed.words)


def test_bit_layout():
    m = torch.zeros(70, dtype=torch.bool)
    m[0] = m[33] = m[31] = m[69] = True
    words = pack_mask(m).words.tolist()
    assert words == [1 - 2**31, 2, 1 << 5]  # bit 31 is the int32 sign bit


def test_rejects_float_mask_and_short_words():
    with pytest.raises(ValueError, match="bool or uint8"):
        pack_mask(torch.ones(3))
    with pytest.raises(ValueError, match="cannot hold 40 bits"):
        unpack_mask(BitMask(torch.zeros(1, dtype=torch.int32), (40,)))
