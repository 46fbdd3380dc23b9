"""Magnitude criteria hit the target count exactly and break ties deterministically."""
import pytest
import torch

from dstrain.sparsity.magnitude import (
    global_magnitude_masks,
    layerwise_magnitude_masks,
    num_to_prune,
)


def _tensors(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(7, 5, generator=g), torch.randn(3, 3, 3, 3, generator=g) * 0.1, torch.randn(101, generator=g) * 3]


@pytest.mark.parametrize("sparsity", [0.0, 0.13, 0.5, 0.9, 0.98])
def test_global_sparsity_is_exact(sparsity):
    ts = _tensors()
    masks = global_magnitude_masks(ts, sparsity)
    total = sum(t.numel() for t in ts)
    assert sum(int((~m).sum()) for m in masks) == round(sparsity * total)
    kept = torch.cat([t[m].abs() for t, m in zip(ts, masks)])
    pruned = torch.cat([t[~m].abs() for t, m in zip(ts, masks)])
    if pruned.numel() and kept.numel():
        assert pruned.max() <= kept.min()


def test_global_prunes_small_layers_more_than_layerwise():
    ts = _tensors()
    g = global_magnitude_masks(ts, 0.5)
    assert (~g[1]).float().mean() > 0.9  # the x0.1 tensor loses nearly everything
    lw = layerwise_magnitude_masks(ts, 0.5)
    for t, m in zip(ts, lw):
        assert abs(int((~m).sum()) - 0.5 * t.numel()) <= 0.5  # within one element per tensor


@pytest.mark.parametrize("sparsity", [0.1, 0.37, 0.9])
def test_layerwise_sparsity_within_one_element_per_tensor(sparsity):
    for t, m in zip(_tensors(1), layerwise_magnitude_masks(_tensors(1), sparsity)):
        assert int((~m).sum()) == num_to_prune(t.numel(), sparsity)


def test_ties_are_broken_by_tensor_then_index_order():
    a = torch.tensor([1.0, 1.0, 1.0, 5.0])
    b = torch.tensor([-1.0, 1.0, 2.0, 3.0])
    masks = global_magnitude_masks([a, b], 0.5)  # prune 4 of 8; five elements have |w| = 1
    assert masks[0].tolist() == [False, False, False, True]
    assert masks[1].tolist() == [False, True, True, True]
    again = global_magnitude_masks([a.clone(), b.clone()], 0.5)
    assert all(torch.equal(x, y) for x, y in zip(masks, again))


def test_existing_zeros_stay_pruned_when_sparsity_grows():
    t = torch.randn(1000, generator=torch.Generator().manual_seed(3))
    first = global_magnitude_masks([t], 0.5)[0]
    t = t * first
    second = global_magnitude_masks([t], 0.8)[0]
    assert not (second & ~first).any()


def test_bad_sparsity_is_rejected():
    with pytest.raises(ValueError, match=r"sparsity=1.0 must be in \[0, 1\)"):
        global_magnitude_masks(_tensors(), 1.0)
