"""Layer-wise pruning from calibration inputs, the pass Wanda and SparseGPT share.

Why layer by layer: both criteria need, for every prunable Linear, a statistic of its
inputs (Wanda: the norm of every input feature; SparseGPT: the Hessian X Xᵀ), and the
inputs of decoder layer l must come from the model whose layers before l are already
pruned (and, for SparseGPT, corrected), as both reference implementations
(locuslab/wanda ``prune_wanda``, IST-DASLab/sparsegpt ``llama_sequential``) do.  So the
pass captures what enters the first decoder layer for every calibration sequence, then
for each layer in turn: runs it with hooks on its Linears to collect the statistics,
prunes those Linears, and runs it again to get the inputs of the next layer.  Only one
layer's activations are alive at a time, and no forward pass goes beyond the layers.

Distributed: every rank runs its own share of the calibration sequences
(:meth:`~dstrain.sparsity.criterion.DataHooks.calibration`); the statistics of each layer
are summed over ranks with one all-reduce before it is pruned, and the pruning itself is
a deterministic function of the summed statistics and the weights every rank holds, so
all ranks install the same masks and weights (tested on 2 gloo ranks).

The decoder layers are the ``nn.ModuleList`` that holds the prunable Linears (``model.layers``
of Llama-style models); a prunable parameter outside it, or one that is not a Linear weight,
is refused with the setting to change.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from pydantic import Field
from torch import Tensor, nn

from dstrain.errors import ConfigError
from dstrain.sparsity.criterion import Criterion, DataHooks, StrictSettings
from dstrain.sparsity.nm import dense_layers, nm_eligible, parse_pattern, registry_is_nm
from dstrain.sparsity.registry import MaskRegistry

__all__ = ["CalibrationSettings", "CalibratedCriterion", "find_blocks", "capture_block_inputs", "per_row_mask",
           "InputStat"]


class CalibrationSettings(StrictSettings):
    """The calibration data of a data-driven LLM criterion (defaults: the Wanda and SparseGPT code, see docs/llm.md)."""

    calibration_samples: int = Field(default=128, ge=1, le=1 << 20, description="token sequences drawn from the "
                                     "training split (nsamples in both reference implementations)")
    seq_len: Optional[int] = Field(default=None, ge=1, le=1 << 20, description="tokens per sequence; default "
                                   "task.max_length")
    seed: int = Field(default=0, ge=0, lt=2**32, description="seed of the draw (the references' default seed is 0)")
    batch_size: int = Field(default=8, ge=1, le=1 << 16, description="sequences per forward pass of a layer "
                            "(memory and speed only; the result does not depend on it)")


class InputStat:
    """A statistic of one Linear's inputs, summed over tokens and ranks (Wanda's norms, SparseGPT's Hessian)."""

    def add(self, x: Tensor) -> None:
        """Add the inputs ``x`` ([tokens, in_features], any float dtype)."""
        raise NotImplementedError

    def tensor(self) -> Tensor:
        """The accumulated statistic (all-reduced in place across ranks)."""
        raise NotImplementedError


class _Captured(Exception):
    def __init__(self, args: tuple, kwargs: dict) -> None:
        super().__init__("first decoder layer reached")
        self.args, self.kwargs = args, kwargs


def _world() -> Tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def find_blocks(model: nn.Module, registry: MaskRegistry,
                field: str) -> Tuple[nn.ModuleList, List[List[Tuple[str, nn.Linear]]]]:
    """(the decoder layers, each layer's prunable Linears as (registry name, module) in registry order)."""
    modules = dict(model.named_modules())
    owners: Dict[str, str] = {}  # registry name -> owning module name
    for name in registry.names():
        owner = name.rsplit(".", 1)[0] if "." in name else ""
        if not name.endswith(".weight") or not isinstance(modules.get(owner), nn.Linear):
            raise ConfigError(field, f"prunes Linear weights layer by layer; {name} is not a Linear weight",
                              "exclude it (pruning.exclude) or use criterion: magnitude")
        owners[name] = owner
    best: Optional[Tuple[str, nn.ModuleList]] = None
    best_count = 0
    for mod_name, mod in modules.items():
        if isinstance(mod, nn.ModuleList):
            count = sum(1 for o in owners.values() if o.startswith(mod_name + "."))
            if count > best_count:
                best, best_count = (mod_name, mod), count
    if best is None:
        raise ConfigError(field, "found no list of decoder layers holding the prunable Linears",
                          "use a transformers decoder model (its layers are an nn.ModuleList) or criterion: magnitude")
    list_name, blocks = best
    outside = [n for n, o in owners.items() if not o.startswith(list_name + ".")]
    if outside:
        raise ConfigError(field, f"prunes the Linears inside the decoder layers ({list_name}); {outside[0]} is outside "
                          f"them ({len(outside)} such weight(s))", "exclude it (pruning.exclude)")
    per_block: List[List[Tuple[str, nn.Linear]]] = [[] for _ in blocks]
    for name, owner in owners.items():
        index = int(owner[len(list_name) + 1:].split(".", 1)[0])
        per_block[index].append((name, modules[owner]))
    return blocks, per_block


def capture_block_inputs(model: nn.Module, first_block: nn.Module, sequences: Tensor,
                         batch_size: int) -> List[Tuple[tuple, dict]]:
    """What enters ``first_block`` for each batch of ``sequences``: (args, kwargs) with the hidden states first.

    The model runs up to the first layer and stops there (the hook raises), so nothing
    beyond the embeddings is computed.
    """
    def stop(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        raise _Captured(args, kwargs)

    handle = first_block.register_forward_pre_hook(stop, with_kwargs=True)
    captured = []
    try:
        for lo in range(0, sequences.shape[0], batch_size):
            try:
                model(input_ids=sequences[lo:lo + batch_size], use_cache=False)
            except _Captured as got:
                captured.append((got.args, dict(got.kwargs)))
            else:
                raise RuntimeError("the model's forward never reached its first decoder layer")
    finally:
        handle.remove()
    return captured


def _hidden(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args: tuple, kwargs: dict, hidden: Tensor) -> Tuple[tuple, dict]:
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def per_row_mask(scores: Tensor, k: int) -> Tensor:
    """Keep-mask pruning ``k`` entries of ``scores`` [rows, cols], lowest scores within each row.

    Every row prunes k // rows entries, and the first k % rows rows one more, so the layer
    hits round(sparsity x numel) exactly; ties are pruned lowest column first (a stable sort).
    """
    rows, cols = scores.shape
    order = torch.sort(scores, dim=1, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(cols, device=scores.device).expand(rows, cols).contiguous())
    per_row = torch.full((rows, 1), k // rows, device=scores.device, dtype=torch.long)
    per_row[: k % rows] += 1
    return rank >= per_row


class CalibratedCriterion(Criterion):
    """A criterion that prunes every decoder layer's Linears from statistics of their calibration inputs.

    Subclasses give :meth:`new_stat` (what to collect per Linear) and :meth:`prune_linear`
    (its new mask and, optionally, new weights).  Linears that read the same input tensor
    (q/k/v, gate/up) share one statistic: it is collected once per layer.
    """

    needs_data = True
    supports_nm = True
    Settings = CalibrationSettings
    selection = "per layer"
    """How the unstructured selection compares weights, for the run log."""

    def __init__(self, pruning: Any, registry: MaskRegistry, settings: Optional[CalibrationSettings] = None) -> None:
        super().__init__(pruning, registry, settings or self.Settings())
        self.nm = parse_pattern(pruning.pattern)
        self.hooks: Optional[DataHooks] = None
        self.log: List[Dict[str, float]] = []

    @property
    def field(self) -> str:
        return f"pruning.{self.name}"

    def describe(self) -> List[str]:
        how = (f"pattern {self.pruning.pattern}, per group of {self.nm[1]} inputs" if self.nm else self.selection)
        lines = [f"{self.name}: {how}, from {self.settings.calibration_samples} calibration sequence(s) of the "
                 f"training split; pruning.scope does not apply"]
        if self.nm is not None:
            dense = dense_layers(self.registry, self.nm)
            if dense:
                lines.append(f"pattern {self.pruning.pattern}: {len(dense)} prunable layer(s) left dense (input "
                             f"length not a multiple of {self.nm[1]}): " + ", ".join(dense))
        return lines

    def attach(self, hooks: DataHooks) -> None:
        if hooks.calibration is None:
            raise ConfigError("pruning.criterion", f"{self.name} needs calibration sequences, which this task does not "
                              "give", "use task causal_lm, or criterion: magnitude")
        rank, world = _world()
        if self.settings.calibration_samples < world:
            raise ConfigError(f"{self.field}.calibration_samples", f"{self.settings.calibration_samples} sequence(s) "
                              f"cannot be shared by {world} ranks", f"use at least {world} (one per rank)")
        find_blocks(hooks.model, self.registry, "pruning.criterion")  # refuse an unfit model before training starts
        self.hooks = hooks

    # --- what subclasses give ---------------------------------------------------------------
    def new_stat(self, linear: nn.Linear) -> InputStat:
        raise NotImplementedError

    def prune_linear(self, name: str, weight: Tensor, stat: Tensor, sparsity: float) -> Tuple[Tensor, Optional[Tensor]]:
        """(keep-mask, new weight or None) for ``weight`` (float32 copy) given its all-reduced statistic."""
        raise NotImplementedError

    # --- the pass ----------------------------------------------------------------------------
    def _prunes(self, weight: Tensor, sparsity: float) -> bool:
        return sparsity > 0 and (self.nm is None or nm_eligible(weight, self.nm))

    @torch.no_grad()
    def update(self, sparsity: float, step: int = 0) -> float:
        if self.hooks is None:
            raise RuntimeError(f"{type(self).__name__}.update before attach(): the trainer attaches it after "
                               "deepspeed.initialize")
        names = self.registry.names()
        masks = {n: torch.ones_like(self.registry.params[n], dtype=torch.bool) for n in names}
        if any(self._prunes(self.registry.params[n], sparsity) for n in names):
            self._pass(sparsity, step, masks)
        return self.registry.set_masks([masks[n] for n in names])

    def _pass(self, sparsity: float, step: int, masks: Dict[str, Tensor]) -> None:
        t0 = time.perf_counter()
        model = self.hooks.model
        rank, world = _world()
        blocks, per_block = find_blocks(model, self.registry, "pruning.criterion")
        settings = self.settings
        device = next(iter(self.registry.params.values())).device
        sequences = self.hooks.calibration(settings.calibration_samples, settings.seq_len, settings.seed, rank, world,
                                           field=self.field).to(device)
        was_training = model.training
        model.eval()
        try:
            inputs = capture_block_inputs(model, blocks[0], sequences, settings.batch_size)
            t_capture = time.perf_counter()
            for block, linears in zip(blocks, per_block):
                stats = self._collect(block, linears, inputs, world)
                changes: Dict[str, Tensor] = {}
                for name, linear in linears:
                    param = self.registry.params[name]
                    if not self._prunes(param, sparsity):
                        continue
                    mask, new_weight = self.prune_linear(name, param.detach().float(), stats[name], sparsity)
                    # the change also reaches DeepSpeed's fp32 masters, with their pruned entries zeroed
                    changes[name] = (torch.zeros_like(param, dtype=torch.float32) if new_weight is None
                                     else new_weight - param.detach().float())
                    if new_weight is not None:
                        param.copy_(new_weight.to(param.dtype))
                    param.mul_(mask)
                    masks[name] = mask
                if changes and self.hooks.write_masters is not None:
                    self.hooks.write_masters(changes, {n: masks[n] for n in changes})
                inputs = [_with_hidden(args, kwargs, self._output(block(*args, **kwargs)))
                          for args, kwargs in inputs]
        finally:
            model.train(was_training)
        self.log.append({"step": step, "sparsity": sparsity, "capture_s": t_capture - t0,
                         "total_s": time.perf_counter() - t0, "tokens": int(sequences.numel()) * world})

    @staticmethod
    def _output(out: Any) -> Tensor:
        return out[0] if isinstance(out, (tuple, list)) else out

    def _collect(self, block: nn.Module, linears: List[Tuple[str, nn.Linear]], inputs: List[Tuple[tuple, dict]],
                 world: int) -> Dict[str, Tensor]:
        """Every Linear's statistic over this rank's inputs, summed over ranks (one all-reduce per layer)."""
        stats: Dict[str, InputStat] = {}
        shared: Dict[str, str] = {}  # Linear -> the Linear whose statistic it shares (same input tensor)
        seen: List[Tuple[Tensor, str]] = []

        def hook_for(name: str, linear: nn.Linear) -> Callable:
            def hook(_module: nn.Module, args: tuple, _out: Any) -> None:
                x = args[0]
                if name not in shared:  # first batch: find out which Linears read the same tensor
                    owner = next((n for t, n in seen if t is x), None)
                    shared[name] = owner or name
                    if owner is None:
                        seen.append((x, name))
                        stats[name] = self.new_stat(linear)
                if shared[name] == name:
                    stats[name].add(x.reshape(-1, x.shape[-1]))
            return hook

        handles = [linear.register_forward_hook(hook_for(name, linear)) for name, linear in linears]
        try:
            for args, kwargs in inputs:
                block(*args, **kwargs)
                seen.clear()  # the grouping is fixed by the first batch; the tensors need not live on
        finally:
            for h in handles:
                h.remove()
        idle = [name for name, _ in linears if name not in shared]
        if idle:
            raise RuntimeError(f"{idle[0]} did not run in its decoder layer's forward pass: no calibration inputs")
        tensors = {name: stat.tensor() for name, stat in stats.items()}
        if world > 1 and tensors:
            flat = torch.cat([t.reshape(-1) for t in tensors.values()])
            dist.all_reduce(flat)
            offset = 0
            for t in tensors.values():
                t.view(-1).copy_(flat[offset:offset + t.numel()])
                offset += t.numel()
        return {name: tensors[shared[name]] for name, _ in linears}

    def result(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        if self.log:
            out[f"{self.name}_pass_s"] = self.log[-1]["total_s"]
            out["calibration_tokens"] = self.log[-1]["tokens"]
        if self.nm is not None:
            out["nm_exact"] = registry_is_nm(self.registry, self.nm)
            out["nm_dense_layers"] = sorted(n for n, p in self.registry.params.items() if not nm_eligible(p, self.nm))
        return out
