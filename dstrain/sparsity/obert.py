"""oBERT mask updates inside a (possibly data-parallel) training run.

At a mask update the pruner (1) collects ``num_grads`` mini-batch gradients of the
training loss (the trainer's loss, with distillation when the recipe has it) with the
model in eval mode, as SparseML's OBSPruningModifier does (no dropout noise, no
BatchNorm statistics updated by the collection); (2) feeds each into the block
inverse Fisher (:mod:`dstrain.sparsity.fisher`); (3) scores every weight and picks the global
(or per-tensor) lowest scores with the exact count and the tie-break of the magnitude
path (:func:`dstrain.sparsity.magnitude.masks_below_threshold`: tensor order, then flat index);
(4) applies the multi-weight OBS correction to the surviving weights of every block.

Distribution: every rank owns a fixed contiguous 1/world share of the blocks (the
Fisher is the memory: ~17 GB fp32 for BERT-base at B = 50), whatever the ZeRO stage.
The collectives are one all-reduce per gradient (the rank-averaged gradient, exactly
the gradient of the global gradient batch), one for the scores and one for the
updated weights; the Woodbury updates between them are local, and every rank does the
same amount of them, so no rank waits on another for long.  Each all-reduced vector
holds only one rank's non-zero share per entry (the others add +0), so scores and
weights are bit-identical on all ranks and the selection needs no further agreement.
"""
from __future__ import annotations

import time
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
from pydantic import Field
from torch import Tensor, nn

from dstrain.errors import ConfigError
from dstrain.sparsity.criterion import Criterion, DataHooks, StrictSettings
from dstrain.sparsity.fisher import BlockFisherInverse, BlockLayout, fisher_bytes
from dstrain.sparsity.magnitude import (
    KthSelector,
    default_selector,
    masks_below_threshold,
    num_to_prune,
)
from dstrain.sparsity.registry import MaskRegistry


def _world() -> tuple:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def available_bytes(device: torch.device) -> int:
    """Free memory where the Fisher blocks would live: CUDA free memory, or MemAvailable of the host."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62  # unknown: do not refuse


def check_fits(numels: List[int], block_size: int, world: int, free: int, device: str) -> Dict[str, int]:
    """Refuse, with the settings that would help, when one rank's share cannot fit ``free`` bytes."""
    need = fisher_bytes(numels, block_size, world)
    if need["total"] > 0.9 * free:
        gib = 1024 ** 3
        raise ConfigError("pruning.obert.block_size",
                          f"{block_size} needs {need['total'] / gib:.1f} GiB per rank for {sum(numels):,} prunable "
                          f"weights on {world} rank(s) (Fisher blocks {need['fisher'] / gib:.1f} GiB), "
                          f"but {device} has {free / gib:.1f} GiB free",
                          "lower pruning.obert.block_size (memory grows with it linearly), or run on more ranks "
                          "(each holds 1/world of the blocks)")
    return need


class ObertSettings(StrictSettings):
    """``pruning.obert``: the oBERT settings (defaults: the oBERT MNLI/QQP recipes, see docs/criteria.md)."""

    # oBERT uses 1024 gradients; a million is a million backward passes per mask update
    num_grads: int = Field(default=1024, ge=1, le=10**6, description="mini-batch gradients per mask update (m)")
    # a block of B weights costs B^2 floats per B weights: 4096 already needs 16 KiB per weight
    block_size: int = Field(default=50, ge=1, le=4096, description="weights per diagonal Fisher block (B)")
    # a damping above 1e6 drowns the gradient term: the scores become plain magnitudes
    damping: float = Field(default=1e-7, gt=0, le=1e6, description="lambda in F = lambda I + (1/m) sum g g^T")
    weight_update: bool = Field(default=True, description="apply the OBS correction to the surviving weights")
    # the same bound as training.batch_size
    grad_batch_size: Optional[int] = Field(default=None, ge=1, le=2**24, description="samples per gradient over all "
                                           "ranks; default training.batch_size")


class ObertCriterion(Criterion):
    """oBERT: prune the weights whose removal costs the least loss under the block Fisher, and correct the rest."""

    name = "obert"
    Settings = ObertSettings
    needs_data = True

    def __init__(self, pruning: Any, registry: MaskRegistry, settings: Optional[ObertSettings] = None,
                 selector: Optional[KthSelector] = None) -> None:
        super().__init__(pruning, registry, settings or ObertSettings())
        self.spec = self.settings
        self.scope = pruning.scope
        self.selector = selector
        self.model: Optional[nn.Module] = None
        self.log: List[Dict[str, float]] = []

    def attach(self, hooks: DataHooks) -> None:
        """Take the model, loss and gradient batches once the engine exists (the controller defers the first update)."""
        self.model, self.loss_fn, self.batches, self.write_masters = (hooks.model, hooks.loss, hooks.batches,
                                                                      hooks.write_masters)
        rank, world = _world()
        device = next(iter(self.registry.params.values())).device
        self.memory = check_fits([p.numel() for p in self.registry.params.values()], self.spec.block_size,
                                 world, available_bytes(device), str(device))

    # --- the three phases ---------------------------------------------------------------
    def _fisher(self, layout: BlockLayout, step: int, lo: int, hi: int, world: int) -> BlockFisherInverse:
        params = [self.registry.params[n] for n in self.registry.names()]
        masks = [self.registry.masks[n] for n in self.registry.names()]
        finv = BlockFisherInverse(hi - lo, layout.block_size, self.spec.num_grads, self.spec.damping,
                                  device=params[0].device)
        was_training = self.model.training
        self.model.eval()
        batches = self.batches(step)
        try:
            for _ in range(self.spec.num_grads):
                with torch.enable_grad():
                    loss = self.loss_fn(next(batches))
                    grads = torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)
                # Pruned weights stay pruned: their gradient is masked (as SparseML does), which
                # decouples them in F, so the OBS correction cannot move them.
                g = layout.pad([gr.float() * m for gr, m in zip(grads, masks)], torch.float32)
                del grads
                if world > 1:
                    dist.all_reduce(g)
                    g.div_(world)
                finv.add_grad(g[lo:hi])
        finally:
            self.model.train(was_training)
        return finv

    def _select(self, score_tensors: List[Tensor], sparsity: float) -> List[Tensor]:
        selector = self.selector or default_selector(score_tensors)
        if self.scope == "layerwise":
            return [masks_below_threshold([s], num_to_prune(s.numel(), sparsity), selector)[0]
                    for s in score_tensors]
        k = num_to_prune(sum(s.numel() for s in score_tensors), sparsity)
        return masks_below_threshold(score_tensors, k, selector)

    @torch.no_grad()
    def update(self, sparsity: float, step: int = 0) -> float:
        if self.model is None:
            raise RuntimeError("ObertCriterion.update before attach(): the trainer attaches it after deepspeed.initialize")
        t0 = time.perf_counter()
        rank, world = _world()
        names = self.registry.names()
        params = [self.registry.params[n] for n in names]
        layout = BlockLayout(tuple(p.numel() for p in params), self.spec.block_size)
        lo, hi = layout.share(rank, world)
        finv = self._fisher(layout, step, lo, hi, world)
        t_grads = time.perf_counter()

        w = layout.pad(params, torch.float32)
        scores = torch.zeros_like(w)
        scores[lo:hi] = finv.scores(w[lo:hi]).float()
        if world > 1:
            dist.all_reduce(scores)
        score_tensors = [s.view_as(p) for s, p in zip(layout.unpad(scores), params)]
        new_masks = self._select(score_tensors, sparsity)
        del scores, score_tensors

        if self.spec.weight_update:
            pruned = layout.pad([~m for m in new_masks])
            new_w = torch.zeros_like(w)
            new_w[lo:hi] = finv.obs_update(w[lo:hi], pruned[lo:hi]).float()
            del finv
            if world > 1:
                dist.all_reduce(new_w)
            values = {n: v.view_as(p) for n, v, p in zip(names, layout.unpad(new_w), params)}
            if self.write_masters is not None:
                self.write_masters({n: values[n] - params[i].float() for i, n in enumerate(names)},
                                   dict(zip(names, new_masks)))
            for n, p in zip(names, params):
                p.copy_(values[n].to(p.dtype))
        flips = self.registry.set_masks(new_masks)
        self.log.append({"step": step, "sparsity": sparsity, "grads_s": t_grads - t0,
                         "total_s": time.perf_counter() - t0})
        return flips
