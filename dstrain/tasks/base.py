"""A Task tells the trainer how to build a model and data and how to score them.

The trainer, recipe scheduler, masks and optimizers are the same for ResNet on
ImageNet and BERT on GLUE; everything that differs between those settings lives
behind this small interface.
"""
from __future__ import annotations

import abc
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from dstrain.errors import ConfigError


def task_config(config_class: type, config: Any, kwargs: Dict[str, Any]) -> Any:
    """A task's config: the one given, or one built from keyword arguments (never both, which would be ambiguous)."""
    if config is None:
        return config_class(**kwargs)
    if kwargs:
        raise TypeError(f"pass either a {config_class.__name__} or keyword arguments, not both (got {sorted(kwargs)})")
    return config


class Task(abc.ABC):
    """One supervised problem: model factory, datasets, forward, loss and metrics."""

    name: str = "task"
    #: Key of :meth:`metrics` reported as the headline number (e.g. ``accuracy``, ``matthews``).
    primary_metric: str = "accuracy"
    #: Collate function for the DataLoader (None = torch default).
    collate_fn: Optional[Callable] = None
    #: Collate function for the training loader only, if it differs (e.g. one that drops unreadable images).
    train_collate_fn: Optional[Callable] = None
    #: Train 4-D weights in channels-last memory format (the trainer applies it; see SparseTrainer).
    channels_last: bool = False

    def skipped_in_batch(self, batch: Any) -> Optional[Tensor]:
        """How many examples of ``batch`` were unreadable and skipped; None if this task never skips."""
        return None

    @abc.abstractmethod
    def build_model(self) -> nn.Module:
        """A freshly initialised (or locally loaded) model; must be deterministic under torch.manual_seed."""

    @abc.abstractmethod
    def build_datasets(self) -> Tuple[Dataset, Dataset]:
        """(train, eval) datasets."""

    @abc.abstractmethod
    def forward(self, model: nn.Module, batch: Any, device: torch.device) -> Tuple[Tensor, Tensor]:
        """Moves ``batch`` to ``device`` and returns (logits, labels)."""

    def forward_with_features(self, model: nn.Module, batch: Any,
                              device: torch.device) -> Tuple[Tensor, Tensor, List[Tensor]]:
        """:meth:`forward` plus per-layer features, for feature distillation (``distillation.squarehead``)."""
        raise ConfigError("distillation.squarehead", f"task {self.name!r} gives no per-layer features to distil",
                          "remove distillation.squarehead (or set it to 0)")

    def eval_forward(self, model: nn.Module, batch: Any, device: torch.device) -> Tuple[Tensor, Tensor]:
        """What evaluation gathers for :meth:`metrics`; by default :meth:`forward`'s (logits, labels).

        A task whose logits are too large to gather (a language model's vocabulary at every
        position) returns per-example sums instead, and reports ``loss`` in :meth:`metrics` itself.
        """
        return self.forward(model, batch, device)

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        return nn.functional.cross_entropy(logits.float(), labels)

    def build_teacher(self, path: str) -> nn.Module:
        """The dense teacher for distillation, loaded from ``path``."""
        raise ConfigError("distillation.teacher", f"task {self.name!r} does not support distillation",
                          "remove the distillation section")

    def export(self, model: nn.Module, out_dir: str) -> bool:
        """Write the trained model in the task's native format; False if the task has none."""
        return False

    @abc.abstractmethod
    def metrics(self, logits: Tensor, labels: Tensor) -> Dict[str, float]:
        """Metrics over the whole eval set (already gathered from all ranks)."""
