"""GLUE fine-tuning as a dstrain Task: a BERT-family classifier from a local directory.

Why this shape: the trainer only knows the :class:`~dstrain.tasks.base.Task` interface,
so everything GLUE-specific — which columns are sentences, regression vs classification,
which metric is the headline, how to pad — is decided here from the task name. The model
and tokenizer come from one ``save_pretrained`` directory (``local_files_only``) because
training machines are offline.

Optional knowledge distillation: give ``teacher_dir`` (a dense model fine-tuned on the
same task) and ``alpha_kd > 0``. The Task interface's ``loss(logits, labels)`` does not
see the batch, so :meth:`forward` computes the teacher's logits for the batch during
training and :meth:`loss` consumes them; both run once per micro-batch, in that order.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from dstrain.data.glue import get_task_spec, glue_collator, load_glue, tokenize_glue
from dstrain.distill import Teacher, distillation_loss
from dstrain.metrics import PRIMARY_METRIC, glue_metrics
from dstrain.tasks.base import Task

__all__ = ["GlueTask"]


def _check_model_dir(path: str, what: str) -> str:
    path = os.fspath(path)
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(
            f"{what} {path!r} has no config.json; pass a local directory written by "
            "save_pretrained (e.g. dstrain.models.tiny_bert.make_tiny_bert, or an exported "
            "hub snapshot) — models are never downloaded at run time"
        )
    return path


class GlueTask(Task):
    """One GLUE task (cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte)."""

    def __init__(
        self,
        task_name: str,
        model_dir: str,
        data_dir: str,
        max_length: int = 128,
        eval_split: Optional[str] = None,
        tokenizer_dir: Optional[str] = None,
        pad_to_multiple_of: Optional[int] = None,
        teacher_dir: Optional[str] = None,
        alpha_kd: float = 0.0,
        kd_temperature: float = 2.0,
    ) -> None:
        self.spec = get_task_spec(task_name)
        self.name = f"glue/{self.spec.name}"
        self.model_dir = _check_model_dir(model_dir, "model_dir")
        self.tokenizer_dir = _check_tokenizer_dir(tokenizer_dir or model_dir)
        self.data_dir = os.fspath(data_dir)
        self.max_length = max_length
        self.eval_split = eval_split or self.spec.eval_splits[0]
        if self.eval_split not in self.spec.eval_splits:
            raise ValueError(f"eval_split={self.eval_split!r} is not one of {list(self.spec.eval_splits)} for {self.spec.name}")
        # Metric table key: MNLI's mismatched dev set is reported as its own "task".
        self.metric_task = "mnli_mismatched" if self.eval_split == "validation_mismatched" else self.spec.name
        self.primary_metric = PRIMARY_METRIC[self.metric_task]
        if not 0.0 <= alpha_kd <= 1.0:
            raise ValueError(f"alpha_kd={alpha_kd}: must be in [0, 1]")
        if alpha_kd > 0.0 and teacher_dir is None:
            raise ValueError(f"alpha_kd={alpha_kd} needs teacher_dir (a dense model fine-tuned on {self.spec.name})")
        self.teacher_dir = _check_model_dir(teacher_dir, "teacher_dir") if teacher_dir is not None else None
        self.alpha_kd = alpha_kd
        self.kd_temperature = kd_temperature
        self._teacher: Optional[Teacher] = None
        self._teacher_logits: Optional[Tensor] = None

        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_dir, local_files_only=True)
        self.collate_fn = glue_collator(self.tokenizer, pad_to_multiple_of=pad_to_multiple_of)

    # -- model / data -------------------------------------------------------------------

    def _from_pretrained(self, path: str) -> nn.Module:
        from transformers import AutoModelForSequenceClassification

        kwargs: Dict[str, Any] = dict(num_labels=self.spec.num_labels, local_files_only=True)
        if self.spec.is_regression:
            kwargs["problem_type"] = "regression"
        else:
            kwargs["problem_type"] = "single_label_classification"
            kwargs["id2label"] = dict(enumerate(self.spec.label_names))
            kwargs["label2id"] = {n: i for i, n in enumerate(self.spec.label_names)}
        return AutoModelForSequenceClassification.from_pretrained(path, **kwargs)

    def build_model(self) -> nn.Module:
        """Pretrained encoder from ``model_dir``; a fresh head (seeded by torch.manual_seed) if it has none."""
        return self._from_pretrained(self.model_dir)

    def build_teacher(self) -> Optional[Teacher]:
        if self.teacher_dir is None:
            return None
        if self._teacher is None:
            self._teacher = Teacher(self._from_pretrained(self.teacher_dir))
        return self._teacher

    def build_datasets(self) -> Tuple[Dataset, Dataset]:
        dsd = load_glue(self.spec.name, self.data_dir, splits=("train", self.eval_split))
        tok = tokenize_glue(dsd, self.tokenizer, self.spec.name, max_length=self.max_length)
        return tok["train"], tok[self.eval_split]

    # -- step ---------------------------------------------------------------------------

    def forward(self, model: nn.Module, batch: Any, device: torch.device) -> Tuple[Tensor, Tensor]:
        if not isinstance(batch, Mapping) or "labels" not in batch:
            raise ValueError("GLUE batches are dicts with 'labels' (use task.collate_fn as the DataLoader collate_fn)")
        inputs = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k != "labels"}
        labels = batch["labels"].to(device, non_blocking=True)
        # labels are not passed to the model so HF does not compute a second loss.
        logits = model(**inputs).logits
        if self.spec.is_regression:
            logits = logits.squeeze(-1)
        self._teacher_logits = None
        if self.alpha_kd > 0.0 and model.training:
            teacher = self.build_teacher()
            assert teacher is not None
            teacher.to(device)
            t = teacher(**inputs)
            self._teacher_logits = t.squeeze(-1) if self.spec.is_regression else t
        return logits, labels

    def hard_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        if self.spec.is_regression:
            return nn.functional.mse_loss(logits.float().reshape(-1), labels.float().reshape(-1))
        return nn.functional.cross_entropy(logits.float(), labels.long())

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        hard = self.hard_loss(logits, labels)
        teacher_logits, self._teacher_logits = self._teacher_logits, None
        if teacher_logits is None:
            return hard
        return distillation_loss(logits, teacher_logits, hard, self.alpha_kd, self.kd_temperature,
                                 regression=self.spec.is_regression)

    def metrics(self, logits: Tensor, labels: Tensor) -> Dict[str, float]:
        return glue_metrics(self.metric_task, logits, labels)


def _check_tokenizer_dir(path: str) -> str:
    path = os.fspath(path)
    names = ("tokenizer.json", "vocab.txt", "tokenizer_config.json")
    if not any(os.path.isfile(os.path.join(path, n)) for n in names):
        raise ValueError(f"tokenizer_dir {path!r} has none of {names}; save the tokenizer there with save_pretrained")
    return path
