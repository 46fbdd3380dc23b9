"""The criterion interface: what decides which weights a mask update prunes.

Why an interface: the recipe scheduler (:class:`~dstrain.sparsity.controller.SparsityController`)
only knows *when* masks change and to what sparsity; *how* they are chosen (magnitude,
N:M groups, second-order oBERT scores, ...) is a criterion's business.  The recipe's
``pruning.criterion`` names one, it is built once when the run is set up, and the
controller calls :meth:`Criterion.update` at every mask update.  A new criterion is one
file with a :class:`Criterion` subclass plus one line in :data:`CRITERIA`; its own
settings (if any) are a pydantic model on the class, read from the recipe section named
after it (``pruning: {criterion: obert, obert: {block_size: 50}}``).

Criteria that need data (gradients of the training loss, calibration inputs) say so
with :attr:`Criterion.needs_data`; the trainer then hands them a :class:`DataHooks`
once the DeepSpeed engine exists, and their first update waits for it.
"""
from __future__ import annotations

import abc
import importlib
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Dict, Iterator, List, Optional, Type

from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from dstrain.sparsity.registry import MaskRegistry

CRITERIA: Dict[str, str] = {
    "magnitude": "dstrain.sparsity.magnitude:MagnitudeCriterion",
    "obert": "dstrain.sparsity.obert:ObertCriterion",
    "wanda": "dstrain.sparsity.wanda:WandaCriterion",
    "sparsegpt": "dstrain.sparsity.sparsegpt:SparseGPTCriterion",
}
"""Criterion name (the recipe's ``pruning.criterion``) -> ``module:class``, imported on first use."""


class StrictSettings(BaseModel):
    """Base of a criterion's settings: unknown keys are errors, types are strict and numbers finite, as in
    the recipe (an infinite damping reaches the Fisher inverse as a LinAlgError otherwise)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)


@dataclass
class DataHooks:
    """What a data-driven criterion gets from the trainer once the engine exists.

    ``model`` is the bare module (not the engine: no gradient accumulation, no ZeRO hooks);
    ``loss`` computes the training loss of one batch (with distillation when the recipe
    has it); ``batches(step)`` yields this rank's part of gradient mini-batches, seeded by
    the recipe step so that every world size and every resume sees the same samples;
    ``write_masters`` adds weight changes to DeepSpeed's fp32 master copies
    (:meth:`~dstrain.sparsity.partitions.PartitionMasks.write_masters`);
    ``calibration(samples, seq_len, seed, rank, world)`` gives this rank's share of ``samples``
    token sequences from the training split, the same windows on every world size, for
    criteria that need layer inputs rather than gradients (None when the task has none).
    """

    model: nn.Module
    loss: Callable[[Any], Tensor]
    batches: Callable[[int], Iterator[Any]]
    write_masters: Optional[Callable[[Dict[str, Tensor], Dict[str, Tensor]], None]] = None
    calibration: Optional[Callable[..., Tensor]] = None


class Criterion(abc.ABC):
    """Recomputes the masks of a :class:`MaskRegistry` at a target sparsity."""

    name: ClassVar[str]
    Settings: ClassVar[Optional[Type[BaseModel]]] = None
    """The criterion's own recipe section (``pruning.<name>``), or None if it has none."""
    needs_data: ClassVar[bool] = False
    """True if :meth:`update` needs :meth:`attach` first (gradients or calibration inputs)."""
    supports_nm: ClassVar[bool] = False
    """True if it chooses N:M masks for ``pruning.pattern: "N:M"`` recipes."""

    def __init__(self, pruning: Any, registry: MaskRegistry, settings: Optional[BaseModel] = None) -> None:
        self.pruning = pruning  # the recipe's pruning section (scope, pattern, ...)
        self.registry = registry
        self.settings = settings

    def describe(self) -> List[str]:
        """Lines for the run log at set-up (e.g. layers an N:M pattern leaves dense)."""
        return []

    def attach(self, hooks: DataHooks) -> None:
        """Receive the model, loss and data; only criteria with :attr:`needs_data` use it."""

    @abc.abstractmethod
    def update(self, sparsity: float, step: int) -> float:
        """Install new masks at ``sparsity`` (zeroing the pruned weights); returns the fraction of mask flips."""

    def result(self) -> Dict[str, Any]:
        """Fields for the run's result.json (e.g. whether every N:M group is exact)."""
        return {}


def criterion_class(name: str) -> Type[Criterion]:
    """The class registered as ``name``; ValueError naming the known ones otherwise."""
    if name not in CRITERIA:
        raise ValueError(f"unknown criterion {name!r}; use one of {', '.join(sorted(CRITERIA))}")
    module, cls = CRITERIA[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_criterion(pruning: Any, registry: MaskRegistry, **kwargs: Any) -> Criterion:
    """The recipe's criterion for ``registry`` (``pruning`` is the recipe's validated pruning section)."""
    cls = criterion_class(pruning.criterion)
    return cls(pruning, registry, pruning.criterion_settings, **kwargs)
