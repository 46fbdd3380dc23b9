"""SparseGPT: the arithmetic against an explicit float64 OBS, its reconstruction error against magnitude and Wanda."""
import pytest
import torch

from dstrain.sparsity.magnitude import layerwise_magnitude_masks, torch_kth_smallest_abs
from dstrain.sparsity.nm import is_nm, nm_mask
from dstrain.sparsity.sparsegpt import sparsegpt_prune
from dstrain.sparsity.wanda import wanda_mask

F64 = torch.float64


def _layer(rows=6, cols=16, tokens=200, seed=0, dtype=F64):
    """A weight and correlated inputs with uneven feature scales (outliers), as LLM activations have."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g, dtype=dtype)
    mix = torch.randn(cols, cols, generator=g, dtype=dtype) / cols ** 0.5 + torch.eye(cols, dtype=dtype)
    scale = torch.exp(torch.randn(cols, generator=g, dtype=dtype))
    x = (torch.randn(tokens, cols, generator=g, dtype=dtype) @ mix) * scale  # [tokens, in]
    return w, x


def _damped(h, percdamp):
    h = h.clone()
    idx = torch.arange(h.shape[0])
    h[idx, idx] += percdamp * torch.diagonal(h).mean()
    return h


def brute_force_obs(w, h, sparsity, pattern=None, blocksize=4, percdamp=0.01):
    """Sequential OBS from its definition, in float64, no Cholesky: at column j the weights of columns j.. are
    the free ones, with inverse Hessian inv(H[j:, j:]); pruning w_rj moves them by −w_rj/inv_00 · inv_0,:.  The mask
    of a block (N:M group) is chosen when it starts, by the lowest w_rj² / inv(H[j:, j:])_00."""
    rows, cols = w.shape
    h = _damped(h, percdamp)
    inverses = [torch.linalg.inv(h[j:, j:]) for j in range(cols)]
    w = w.clone()
    pruned = torch.zeros_like(w, dtype=torch.bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        if pattern is None:
            k = round(sparsity * rows * i2) - round(sparsity * rows * i1)
            scores = torch.stack([w[:, j] ** 2 / inverses[j][0, 0] for j in range(i1, i2)], dim=1)
            order = torch.sort(scores.reshape(-1), stable=True).indices[:k]
            block = torch.zeros(scores.numel(), dtype=torch.bool)
            block[order] = True
            pruned[:, i1:i2] = block.view(scores.shape)
        for j in range(i1, i2):
            if pattern is not None and (j - i1) % pattern[1] == 0:
                m = pattern[1]
                scores = torch.stack([w[:, c] ** 2 / inverses[c][0, 0] for c in range(j, j + m)], dim=1)
                pruned[:, j:j + m] = ~nm_mask(scores, pattern, scores=scores)
            inv = inverses[j]
            for r in torch.nonzero(pruned[:, j]).reshape(-1).tolist():
                w[r, j:] -= w[r, j] / inv[0, 0] * inv[0, :]
            w[pruned[:, j], j] = 0
    return w, ~pruned


def test_single_pruned_column_is_exactly_the_obs_update():
    """Pruning only the first column: every other weight of the row moves by −w_q H⁻¹[:, q] / [H⁻¹]_qq (OBS)."""
    w, x = _layer()
    h = x.T @ x
    rows, cols = w.shape
    # one block, rows weights pruned: make column 0 the cheapest so that they are all in it
    w0 = w.clone()
    w0[:, 0] *= 1e-3
    new, mask, _ = sparsegpt_prune(w0, h, sparsity=1 / cols, blocksize=cols, percdamp=0.01)
    assert torch.equal(mask[:, 0], torch.zeros(rows, dtype=torch.bool)) and bool(mask[:, 1:].all())
    hinv = torch.linalg.inv(_damped(h, 0.01))
    expected = w0 - (w0[:, :1] / hinv[0, 0]) * hinv[0:1, :]
    torch.testing.assert_close(new, expected, rtol=1e-10, atol=1e-10)
    assert bool((new[:, 0] == 0).all())


@pytest.mark.parametrize("pattern", [None, (2, 4)], ids=["50%", "2:4"])
@pytest.mark.parametrize("blocksize", [4, 8, 16])
def test_matches_brute_force_sequential_obs_in_float64(pattern, blocksize):
    w, x = _layer(rows=5, cols=16, seed=1)
    h = x.T @ x
    new, mask, _ = sparsegpt_prune(w, h, 0.5, pattern, blocksize=blocksize, percdamp=0.01)
    ref_w, ref_mask = brute_force_obs(w, h, 0.5, pattern, blocksize=blocksize, percdamp=0.01)
    assert torch.equal(mask, ref_mask)
    torch.testing.assert_close(new, ref_w, rtol=1e-9, atol=1e-9)
    assert bool((new[~mask] == 0).all())
    assert int((~mask).sum()) == 40
    if pattern is not None:
        assert is_nm(new, pattern)


def test_exact_count_over_blocks_of_uneven_size_and_dead_inputs():
    w, x = _layer(rows=3, cols=10, seed=2)
    x[:, 4] = 0  # an input that is always zero: its weights go first
    new, mask, _ = sparsegpt_prune(w, x.T @ x, 0.3, blocksize=4)
    assert int((~mask).sum()) == round(0.3 * 30)
    assert not bool(mask[:, 4].any()) and bool((new[:, 4] == 0).all())


def _error(w, w_hat, x):
    return float(torch.linalg.norm((w - w_hat) @ x.T))


@pytest.mark.parametrize("pattern", [None, (2, 4)], ids=["50%", "2:4"])
def test_reconstruction_error_is_below_magnitude_and_wanda(pattern):
    w, x = _layer(rows=32, cols=64, tokens=512, seed=3, dtype=torch.float32)
    h = x.T.double() @ x.double()
    new, mask, _ = sparsegpt_prune(w.double(), h, 0.5, pattern, blocksize=16)
    sq = (x.double() ** 2).sum(0)
    if pattern is None:
        magnitude = layerwise_magnitude_masks([w], 0.5, torch_kth_smallest_abs)[0]
    else:
        magnitude = nm_mask(w, pattern)
    wanda = wanda_mask(w, sq, 0.5, pattern)
    errors = {"sparsegpt": _error(w.double(), new, x.double()),
              "wanda": _error(w.double(), (w * wanda).double(), x.double()),
              "magnitude": _error(w.double(), (w * magnitude).double(), x.double())}
    assert errors["sparsegpt"] < errors["wanda"] < errors["magnitude"], errors
    for m in (mask, wanda, magnitude):
        assert int((~m).sum()) == w.numel() // 2
