"""GLUE fine-tuning as a dstrain Task: a BERT-family classifier from a local directory.

Why this shape: the trainer only knows the :class:`~dstrain.tasks.base.Task` interface,
so everything GLUE-specific — which columns are sentences, regression vs classification,
which metric is the headline, how to pad — is decided here from the task name. The model
and tokenizer come from one ``save_pretrained`` directory (``local_files_only``) because
training machines are offline.

Recipe form::

    task: {name: glue, glue_task: mrpc, model_dir: /models/bert-base-uncased, data_dir: /data/glue}
    distillation: {teacher: /models/bert-base-mrpc, alpha: 0.5, temperature: 2.0}

Distillation itself is done by the trainer: it calls :meth:`GlueTask.build_teacher` and
runs the teacher through :meth:`GlueTask.forward` like the student.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Literal, Mapping, Optional, Tuple

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor, nn
from torch.utils.data import Dataset

from dstrain.data.glue import (
    GLUE_TASKS,
    get_task_spec,
    glue_collator,
    load_glue,
    tokenize_glue,
)
from dstrain.errors import ConfigError
from dstrain.metrics import PRIMARY_METRIC, glue_metrics
from dstrain.tasks.base import Task, task_config

__all__ = ["GlueTaskConfig", "GlueTask"]


class GlueTaskConfig(BaseModel):
    """The recipe's ``task`` section for GLUE."""

    # protected_namespaces=(): allow the field name ``model_dir``.
    # allow_inf_nan=False: every number finite, as in the rest of the recipe.
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), strict=True, allow_inf_nan=False)

    name: Literal["glue"] = "glue"
    glue_task: str
    model_dir: str
    data_dir: str
    tokenizer_dir: Optional[str] = None
    # 65536 tokens is far past any BERT-family position table (512); the bound keeps padding finite
    max_length: int = Field(default=128, gt=0, le=65536)
    eval_split: Optional[str] = None
    pad_to_multiple_of: Optional[int] = Field(default=None, gt=0, le=65536)

    @field_validator("glue_task")
    @classmethod
    def _known_task(cls, value: str) -> str:
        return get_task_spec(value).name  # ValueError lists the known tasks

    @field_validator("eval_split")
    @classmethod
    def _known_split(cls, value: Optional[str], info: Any) -> Optional[str]:
        task = info.data.get("glue_task")
        if value is not None and task is not None and value not in GLUE_TASKS[task].eval_splits:
            raise ValueError(f"{value!r} is not an eval split of {task}; use one of {list(GLUE_TASKS[task].eval_splits)}")
        return value


def _check_model_dir(path: str, field: str) -> str:
    path = os.fspath(path)
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ConfigError(
            field, f"{path!r} has no config.json",
            "pass a local directory written by save_pretrained (e.g. dstrain.testing.tiny_bert.make_tiny_bert, "
            "or an exported hub snapshot); models are never downloaded at run time",
        )
    return path


def _check_tokenizer_dir(path: str, field: str) -> str:
    names = ("tokenizer.json", "vocab.txt", "tokenizer_config.json")
    if not any(os.path.isfile(os.path.join(path, n)) for n in names):
        raise ConfigError(field, f"{path!r} has none of {names}", "save the tokenizer there with save_pretrained")
    return path


class GlueTask(Task):
    """One GLUE task (cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte).

    ``GlueTask(GlueTaskConfig(...))`` as built from a recipe, or ``GlueTask(glue_task=...,
    model_dir=..., data_dir=...)`` directly.
    """

    def __init__(self, config: Optional[GlueTaskConfig] = None, **kwargs: Any) -> None:
        self.config = config = task_config(GlueTaskConfig, config, kwargs)
        self.spec = get_task_spec(config.glue_task)
        self.name = f"glue/{self.spec.name}"
        self.model_dir = _check_model_dir(config.model_dir, "task.model_dir")
        self.tokenizer_dir = _check_tokenizer_dir(config.tokenizer_dir or config.model_dir, "task.tokenizer_dir")
        self.eval_split = config.eval_split or self.spec.eval_splits[0]
        # Metric table key: MNLI's mismatched dev set is reported as its own "task".
        self.metric_task = "mnli_mismatched" if self.eval_split == "validation_mismatched" else self.spec.name
        self.primary_metric = PRIMARY_METRIC[self.metric_task]
        self._datasets: Optional[Tuple[Dataset, Dataset]] = None

        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_dir, local_files_only=True)
        self.collate_fn = glue_collator(self.tokenizer, pad_to_multiple_of=config.pad_to_multiple_of)

    # -- model / data -------------------------------------------------------------------

    def _from_pretrained(self, path: str, **extra: Any) -> Any:
        from transformers import AutoModelForSequenceClassification

        kwargs: Dict[str, Any] = dict(num_labels=self.spec.num_labels, local_files_only=True)
        if self.spec.is_regression:
            kwargs["problem_type"] = "regression"
        else:
            kwargs["problem_type"] = "single_label_classification"
            kwargs["id2label"] = dict(enumerate(self.spec.label_names))
            kwargs["label2id"] = {n: i for i, n in enumerate(self.spec.label_names)}
        kwargs.update(extra)
        return AutoModelForSequenceClassification.from_pretrained(path, **kwargs)

    def build_model(self) -> nn.Module:
        """Pretrained encoder from ``model_dir``; a fresh head (seeded by torch.manual_seed) if it
        has none or one of another size (e.g. starting RTE from an MNLI checkpoint)."""
        return self._from_pretrained(self.model_dir, ignore_mismatched_sizes=True)

    def build_teacher(self, teacher: str) -> nn.Module:
        """A dense model already fine-tuned on this task, from a local directory (the trainer freezes it).

        Unlike the student, its classification head must load from the checkpoint: a
        randomly initialised head would make distillation pull towards noise.
        """
        from transformers import AutoConfig

        path = _check_model_dir(teacher, "distillation.teacher")
        n = AutoConfig.from_pretrained(path, local_files_only=True).num_labels
        if n != self.spec.num_labels:
            raise ConfigError("distillation.teacher", f"{path!r} has a {n}-label head, {self.spec.name} needs "
                              f"{self.spec.num_labels}", f"use a teacher fine-tuned on {self.spec.name}")
        model, info = self._from_pretrained(path, output_loading_info=True)
        missing = [k for k in info.get("missing_keys", []) if k]
        if missing:
            raise ConfigError("distillation.teacher", f"{path!r} lacks trained weights {sorted(missing)[:4]}",
                              f"use a teacher fine-tuned on {self.spec.name} (saved with save_pretrained)")
        return model

    def export(self, model: nn.Module, out_dir: str) -> bool:
        """save_pretrained folder (with tokenizer): the next run's teacher or a plain transformers model."""
        from dstrain.export import export_sparse_model

        export_sparse_model(model, out_dir, tokenizer=self.tokenizer)
        return True

    def build_datasets(self) -> Tuple[Dataset, Dataset]:
        if self._datasets is None:
            try:
                dsd = load_glue(self.spec.name, self.config.data_dir, splits=("train", self.eval_split))
            except ValueError as err:
                raise ConfigError("task.data_dir", str(err)) from None
            tok = tokenize_glue(dsd, self.tokenizer, self.spec.name, max_length=self.config.max_length)
            self._datasets = (tok["train"], tok[self.eval_split])
        return self._datasets

    # -- step ---------------------------------------------------------------------------

    def forward(self, model: nn.Module, batch: Any, device: torch.device) -> Tuple[Tensor, Tensor]:
        if not isinstance(batch, Mapping) or "labels" not in batch:
            raise ValueError("GLUE batches are dicts with 'labels' (use task.collate_fn as the DataLoader collate_fn)")
        inputs = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k != "labels"}
        labels = batch["labels"].to(device, non_blocking=True)
        # labels are not passed to the model, so HF does not compute a second loss.
        logits = model(**inputs).logits
        if self.spec.is_regression:
            logits = logits.squeeze(-1)
        return logits, labels

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        if self.spec.is_regression:
            return nn.functional.mse_loss(logits.float().reshape(-1), labels.float().reshape(-1))
        return nn.functional.cross_entropy(logits.float(), labels.long())

    def metrics(self, logits: Tensor, labels: Tensor) -> Dict[str, float]:
        return glue_metrics(self.metric_task, logits, labels)
