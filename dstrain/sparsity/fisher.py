"""The Optimal BERT Surgeon / WoodFisher arithmetic: block-diagonal inverse empirical Fisher, scores, OBS update.

Kurtic et al. 2022 ("The Optimal BERT Surgeon", oBERT) and Singh & Alistarh 2020
(WoodFisher) approximate the loss Hessian by the empirical Fisher of ``m`` mini-batch
gradients, restricted to blocks of ``B`` consecutive weights:

    F = lambda * I + (1/m) * sum_i g_i g_i^T        (one B x B matrix per block)

Its inverse is never formed by inverting F: it starts as I / lambda and takes one
Sherman-Morrison (rank-one Woodbury) update per gradient,

    F^-1 <- F^-1 - (F^-1 g)(F^-1 g)^T / (m + g^T F^-1 g),

for all blocks at once with batched matrix products, so the gradients never have to be
stored (m x 85M floats would be ~350 GB for BERT-base).  Pruning weight q alone costs
rho_q = w_q^2 / (2 [F^-1]_qq) of loss; for a set E of weights of one block pruned
together, the optimal change of the others is the multi-weight OBS correction

    dw = -F^-1 E^T (E F^-1 E^T)^-1 E w,

which this module computes exactly for every block's own pruned set, in batches of
blocks (one padded linear solve per block: no Python loop over blocks).

Blocks are laid out per tensor as in SparseML's ``EmpiricalBlockFisherInverse``: each
tensor's flat weights are cut into blocks of B, its last block zero-padded.  Padding
positions get zero gradients, so they are decoupled from the real weights and never
change them.  This module is pure arithmetic; :mod:`dstrain.sparsity.obert` collects the
gradients, splits the blocks across ranks and selects the weights to prune.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Sequence

import torch
from torch import Tensor


@dataclass(frozen=True)
class BlockLayout:
    """Where each tensor's blocks sit in the concatenated, per-tensor padded block list."""

    numels: tuple
    block_size: int

    @property
    def blocks_per_tensor(self) -> List[int]:
        return [math.ceil(n / self.block_size) for n in self.numels]

    @property
    def num_blocks(self) -> int:
        return sum(self.blocks_per_tensor)

    @property
    def padded_numel(self) -> int:
        return self.num_blocks * self.block_size

    def pad(self, tensors: Sequence[Tensor], dtype: torch.dtype | None = None) -> Tensor:
        """Concatenate flat tensors, each zero-padded to a whole number of blocks: (num_blocks, B)."""
        parts = []
        for t, nb in zip(tensors, self.blocks_per_tensor):
            flat = t.reshape(-1).to(dtype or t.dtype)
            parts.append(flat)
            extra = nb * self.block_size - flat.numel()
            if extra:
                parts.append(flat.new_zeros(extra))
        return torch.cat(parts).view(self.num_blocks, self.block_size)

    def unpad(self, blocks: Tensor) -> List[Tensor]:
        """Inverse of :meth:`pad`: flat per-tensor views without the padding."""
        flat = blocks.reshape(-1)
        out, offset = [], 0
        for n, nb in zip(self.numels, self.blocks_per_tensor):
            out.append(flat[offset:offset + n])
            offset += nb * self.block_size
        return out

    def share(self, rank: int, world: int) -> tuple:
        """Contiguous block range [lo, hi) owned by ``rank``: a fixed 1/world of the blocks."""
        per = math.ceil(self.num_blocks / world)
        lo = min(rank * per, self.num_blocks)
        return lo, min(lo + per, self.num_blocks)


class BlockFisherInverse:
    """Inverse of F = lambda I + (1/m) sum g g^T for ``num_blocks`` blocks of size B, built gradient by gradient."""

    def __init__(self, num_blocks: int, block_size: int, num_grads: int, damping: float,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        if num_grads < 1 or damping <= 0:
            raise ValueError(f"num_grads={num_grads} must be >= 1 and damping={damping} > 0")
        self.block_size, self.num_grads, self.damping = block_size, num_grads, damping
        self.finv = torch.eye(block_size, device=device, dtype=dtype).div_(damping).repeat(num_blocks, 1, 1)
        self.grads_added = 0

    @torch.no_grad()
    def add_grad(self, g: Tensor) -> None:
        """One Sherman-Morrison step for every block; ``g`` is (num_blocks, B)."""
        g = g.to(self.finv.dtype)
        finv_g = torch.bmm(self.finv, g.unsqueeze(2)).squeeze(2)  # F^-1 g, F^-1 is symmetric
        denom = (g * finv_g).sum(1).add_(self.num_grads)  # m + g^T F^-1 g  (> 0)
        finv_g.div_(denom.sqrt().unsqueeze(1))
        self.finv.baddbmm_(finv_g.unsqueeze(2), finv_g.unsqueeze(1), alpha=-1.0)
        self.grads_added += 1

    def diag(self) -> Tensor:
        """[F^-1]_qq per block: (num_blocks, B)."""
        return self.finv.diagonal(dim1=1, dim2=2)

    def scores(self, w: Tensor) -> Tensor:
        """rho = w^2 / (2 [F^-1]_qq), the loss increase of pruning each weight alone; ``w`` is (num_blocks, B)."""
        w = w.to(self.finv.dtype)
        return w.square() / (2.0 * self.diag())

    @torch.no_grad()
    def obs_update(self, w: Tensor, pruned: Tensor, chunk: int | None = None,
                   solve_dtype: torch.dtype = torch.float64) -> Tensor:
        """Weights after pruning ``pruned`` (bool, (num_blocks, B)) with the exact multi-weight OBS correction.

        Per block: x = (E F^-1 E^T)^-1 E w, lifted back to B entries (zero outside E), and
        w' = w - F^-1 x.  The |E| x |E| systems differ in size from block to block; each is
        embedded in a B x B system whose rows outside E are the identity (scaled by the
        block's own diagonal, to keep it well scaled) and right-hand side zero, which forces
        x = 0 there.  Blocks without a pruned weight are skipped; the solve runs in
        ``solve_dtype`` (float64 by default: F^-1 entries reach 1/lambda = 1e7).  Pruned
        entries are written as exact zeros (they are zero analytically).
        """
        chunk = chunk or solve_chunk(self.block_size)
        out = w.to(self.finv.dtype).clone()
        rows = torch.nonzero(pruned.any(1)).squeeze(1)
        for start in range(0, rows.numel(), chunk):
            idx = rows[start:start + chunk]
            finv = self.finv[idx].to(solve_dtype)
            p = pruned[idx].to(solve_dtype)
            wb = out[idx].to(solve_dtype)
            keep_diag = (1.0 - p) * finv.diagonal(dim1=1, dim2=2)
            system = finv * p.unsqueeze(2) * p.unsqueeze(1) + torch.diag_embed(keep_diag)
            x = torch.linalg.solve(system, (wb * p).unsqueeze(2))
            new = wb - torch.bmm(finv, x).squeeze(2)
            new.masked_fill_(pruned[idx], 0.0)
            out[idx] = new.to(out.dtype)
        out.masked_fill_(pruned, 0.0)
        return out


SOLVE_WORKSPACE = 256 << 20
"""Bytes of float64 workspace one chunk of the OBS solve may use (three B x B matrices per block)."""


def solve_chunk(block_size: int) -> int:
    """Blocks per chunk of :meth:`BlockFisherInverse.obs_update`."""
    return max(1, SOLVE_WORKSPACE // (3 * block_size * block_size * 8))


def fisher_bytes(numels: Sequence[int], block_size: int, world: int, element_bytes: int = 4) -> dict:
    """Memory one rank needs for an oBERT mask update (what :class:`~dstrain.sparsity.obert.ObertPruner` allocates).

    ``fisher``: its share of the B x B inverse-Fisher blocks; ``vectors``: full-length
    fp32 buffers every rank holds (the gradient as autograd returns it, its padded
    all-reduced copy, and the scores/weights exchanged after the Woodbury updates);
    ``solve``: the float64 workspace of one chunk of the OBS solve (:data:`SOLVE_WORKSPACE` at most).
    """
    layout = BlockLayout(tuple(int(n) for n in numels), block_size)
    lo, hi = layout.share(0, world)
    fisher = (hi - lo) * block_size * block_size * element_bytes
    vectors = 3 * layout.padded_numel * 4
    solve = 3 * min(solve_chunk(block_size), hi - lo) * block_size * block_size * 8
    return {"fisher": fisher, "vectors": vectors, "solve": solve, "total": fisher + vectors + solve,
            "blocks_per_rank": hi - lo}
