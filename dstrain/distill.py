"""Knowledge distillation from a dense teacher into a sparse student.

Why: at high sparsity, fine-tuning a pruned BERT on GLUE's small training sets loses
accuracy that is largely recovered by matching the dense fine-tuned model's soft
predictions (Hinton et al. 2015; used by Movement Pruning, oBERT, etc.). The loss is

    (1 - alpha_kd) * hard_loss + alpha_kd * T^2 * KL(softmax(t/T) || softmax(s/T))

The T^2 factor keeps the soft term's gradient scale independent of T, so ``alpha_kd``
means the same thing at any temperature. For regression (STS-B) there is no
distribution to soften and the soft term is MSE between student and teacher outputs.
For a language model the same KL is taken token by token (every position is one example).

SquareHead (Kurtic et al. 2023, "Sparse Fine-tuning for Inference Acceleration of Large
Language Models", Section 3) distils features instead: at every decoder layer l the mean
squared error between student and teacher outputs, normalised by the teacher's mean square,

    L_feat = sum_l MSE(f_s^l, f_t^l) / MSE(f_t^l, 0)

so that every layer weighs alike whatever the scale of its activations (LLM hidden states
grow by orders of magnitude from the first layer to the last).  It adds to the loss above
with its own weight (``distillation.squarehead``).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

__all__ = ["kd_term", "distillation_loss", "squarehead_loss"]


def kd_term(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0,
            regression: Optional[bool] = None) -> Tensor:
    """The soft-target term alone (already multiplied by T^2 for classification).

    ``regression`` defaults to "last dim is 1" (STS-B heads output one number).
    The teacher is detached: gradients flow only into the student.
    """
    if temperature <= 0:
        raise ValueError(f"temperature={temperature}: must be > 0")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} "
            "differ in shape; the teacher must share the student's label space"
        )
    s = student_logits.float()
    t = teacher_logits.detach().float()
    if regression is None:
        regression = s.shape[-1] == 1 if s.dim() > 1 else True
    if regression:
        return F.mse_loss(s, t)
    log_p_s = F.log_softmax(s / temperature, dim=-1)
    log_p_t = F.log_softmax(t / temperature, dim=-1)
    # KL(p_t || p_s) averaged over examples ("batchmean" is the true KL per example).
    kl = F.kl_div(log_p_s.reshape(-1, s.shape[-1]), log_p_t.reshape(-1, s.shape[-1]),
                  reduction="batchmean", log_target=True)
    return kl * (temperature ** 2)


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Optional[Tensor],
    hard_loss: Tensor,
    alpha_kd: float,
    temperature: float = 1.0,
    regression: Optional[bool] = None,
) -> Tensor:
    """``(1 - alpha_kd) * hard_loss + alpha_kd * kd_term(...)``.

    With ``alpha_kd == 0`` (or no teacher) it returns ``hard_loss`` itself, so a run
    without a teacher pays nothing and is bit-identical to plain fine-tuning.
    """
    if not 0.0 <= alpha_kd <= 1.0:
        raise ValueError(f"alpha_kd={alpha_kd}: must be in [0, 1]")
    if alpha_kd == 0.0 or teacher_logits is None:
        if teacher_logits is None and alpha_kd > 0.0:
            raise ValueError(f"alpha_kd={alpha_kd} but no teacher logits; pass teacher logits or set alpha_kd=0")
        return hard_loss
    soft = kd_term(student_logits, teacher_logits, temperature, regression)
    return (1.0 - alpha_kd) * hard_loss + alpha_kd * soft


def squarehead_loss(student_features: Sequence[Tensor], teacher_features: Sequence[Tensor],
                    average_over_ranks: bool = False) -> Tensor:
    """sum over layers of MSE(student, teacher) / mean(teacher ** 2), in float32; the teacher is detached.

    ``average_over_ranks``: the teacher's mean squares are averaged over the data-parallel ranks
    (one all-reduce of a vector of per-layer scalars, which carry no gradient), so that the loss of
    a global batch split over N processes is the loss of that batch in one process: a per-rank
    denominator would make the ratio depend on the world size. Every rank must call it together
    (the training step does; equal per-rank batches, as the trainer's loaders drop partial ones).
    """
    if len(student_features) != len(teacher_features) or not student_features:
        raise ValueError(f"{len(student_features)} student and {len(teacher_features)} teacher layers: "
                         "SquareHead pairs the layers of one architecture")
    for s, t in zip(student_features, teacher_features):
        if s.shape != t.shape:
            raise ValueError(f"student features {tuple(s.shape)} and teacher features {tuple(t.shape)} differ")
    scales = torch.stack([t.detach().float().pow(2).mean() for t in teacher_features])
    if average_over_ranks and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(scales)
        scales = scales / dist.get_world_size()
    scales = scales.clamp_min(1e-30)
    total = None
    for s, t, scale in zip(student_features, teacher_features, scales):
        term = F.mse_loss(s.float(), t.detach().float()) / scale
        total = term if total is None else total + term
    return total
