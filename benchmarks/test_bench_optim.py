"""Masked optimizer step: dense torch fused vs unfused masking vs dstrain torch vs fused C++ (CPU) / Triton (GPU).

For ResNet50- and BERT-base-shaped parameter lists with 90% random masks on every
weight matrix / conv kernel (biases and norms dense), per optimizer step:

* ``dense_torch_fused``: ``torch.optim.SGD/AdamW(fused=True)`` (foreach if fused is
  unavailable), no masking: the speed of light for an unmasked step;
* ``unfused_masked``: the usual way to keep pruned weights at zero with a stock
  optimizer: mask the grads, torch fused step, then multiply params and every state
  buffer by the mask (the baseline every ratio is against);
* ``dstrain_torch``: ``MaskedSGD/MaskedAdamW(backend='torch')`` (the exact reference);
* ``dstrain_cpu`` (CPU runs only): ``backend='cpu'``, the fused C++ step of
  ``dstrain/optim/cpu_kernels.py``, with byte masks;
* ``triton_fused`` / ``triton_fused_bitmask`` (GPU runs only): ``backend='triton'`` with
  byte / packed masks.

Reported per step (extra_info, and ``python benchmarks/report.py out.json``):
median time, effective GB/s (minimum bytes a fused step moves / time, see
``common.step_bytes``), that as a % of the copy bandwidth measured in the same run
(``common.copy_gbps``), the speed-up vs ``unfused_masked`` and the time relative to
``dense_torch_fused``, both measured in the same run; for the fused rows also that
last ratio from alternating pairs of steps (``common.paired_ratio``), which a load
change on a shared machine cannot bias.  No speed assertions: these are measurements.
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import pytest
import torch

from common import (COPY_ELEMENTS, DEVICE, ROUNDS, copy_gbps, cuda_name, make_masks, make_params, median_seconds, model_shapes,
                    paired_ratio, record, step_bytes, synced)
from dstrain.optim import MaskedAdamW, MaskedSGD

HYPER = {
    "sgd": dict(lr=0.1, momentum=0.9, weight_decay=1e-4),
    "adamw": dict(lr=1e-3, weight_decay=0.01),
}
STATE_KEYS = {"sgd": ("momentum_buffer",), "adamw": ("exp_avg", "exp_avg_sq")}
_BASELINE_S: Dict[Tuple[str, str], float] = {}


def _torch_optimizer(optimizer: str, params) -> torch.optim.Optimizer:
    """torch's fused implementation where this build has it, else foreach."""
    cls = torch.optim.SGD if optimizer == "sgd" else torch.optim.AdamW
    for kwargs in (dict(fused=True), dict(foreach=True)):
        try:
            opt = cls(params, **HYPER[optimizer], **kwargs)
            opt.step()  # fused support is only checked on the first step on some versions
            return opt
        except (RuntimeError, ValueError, TypeError):
            continue
    raise RuntimeError(f"no fused or foreach torch {optimizer} on {DEVICE}")


def _dense_step(optimizer: str, params, masks) -> Callable[[], None]:
    opt = _torch_optimizer(optimizer, params)
    return opt.step


def _unfused_masked_step(optimizer: str, params, masks) -> Callable[[], None]:
    pairs = [(p, m) for p, m in zip(params, masks) if m is not None]
    masked_params = [p for p, _ in pairs]
    mask_list = [m for _, m in pairs]
    opt = _torch_optimizer(optimizer, params)
    states = [[opt.state[p][k] for p in masked_params] for k in STATE_KEYS[optimizer]]

    @torch.no_grad()
    def step() -> None:
        torch._foreach_mul_([p.grad for p in masked_params], mask_list)
        opt.step()
        torch._foreach_mul_(masked_params, mask_list)
        for state in states:
            torch._foreach_mul_(state, mask_list)

    return step


def _masked_optimizer_step(backend: str, bitmask: bool = False):
    def build(optimizer: str, params, masks) -> Callable[[], None]:
        if bitmask:
            from dstrain.kernels import pack_mask

            masks = [None if m is None else pack_mask(m) for m in masks]
        by_id = {id(p): m for p, m in zip(params, masks)}
        cls = MaskedSGD if optimizer == "sgd" else MaskedAdamW
        opt = cls(params, backend=backend, mask_source=lambda p: by_id.get(id(p)), **HYPER[optimizer])
        opt.step()  # create state (and autotune, for Triton) outside the timed region
        return opt.step

    return build


IMPLS = {
    "dense_torch_fused": _dense_step,
    "unfused_masked": _unfused_masked_step,
    "dstrain_torch": _masked_optimizer_step("torch"),
    "dstrain_cpu": _masked_optimizer_step("cpu"),
    "triton_fused": _masked_optimizer_step("triton"),
    "triton_fused_bitmask": _masked_optimizer_step("triton", bitmask=True),
}


def _setup(model: str, optimizer: str, impl: str):
    params = make_params(model_shapes(model))
    masks = make_masks(params)
    return params, masks, IMPLS[impl](optimizer, params, masks)


def _baseline_seconds(model: str, optimizer: str) -> float:
    """The unfused baseline's median step time, measured once per run on its own copy."""
    key = (model, optimizer)
    if key not in _BASELINE_S:
        params, masks, step = _setup(model, optimizer, "unfused_masked")
        _BASELINE_S[key] = median_seconds(step)
        del params, masks, step
        if DEVICE.type == "cuda":
            torch.cuda.empty_cache()
    return _BASELINE_S[key]


FUSED = ("dstrain_cpu", "triton_fused", "triton_fused_bitmask")


def test_copy_bandwidth(benchmark):
    """The speed of light the '% of copy' column refers to, as its own row (group 'copy')."""
    src = torch.rand(COPY_ELEMENTS, device=DEVICE)
    dst = torch.empty_like(src)
    benchmark.group = "copy"
    benchmark.pedantic(synced(lambda: dst.copy_(src)), rounds=ROUNDS, warmup_rounds=3, iterations=1)
    record(benchmark, bytes_moved=2 * src.numel() * src.element_size(), baseline_s=None, baseline_label="",
           label="copy", n_tensors=1, n_params=src.numel(), device=cuda_name())


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("model", ["resnet50", "bert_base"])
def test_optimizer_step(benchmark, model, optimizer, impl):
    if impl == "dstrain_cpu" and DEVICE.type != "cpu":
        pytest.skip("backend='cpu' steps CPU tensors; the GPU rows are the Triton ones")
    copy_gbps()  # probed once, before this test allocates its tensors (lower peak memory)
    baseline = _baseline_seconds(model, optimizer)
    params, masks, step = _setup(model, optimizer, impl)
    benchmark.group = f"{model}-{optimizer}"
    benchmark.pedantic(synced(step), rounds=ROUNDS, warmup_rounds=3, iterations=1)
    dense = impl == "dense_torch_fused"
    bytes_moved = step_bytes(params, [None] * len(params) if dense else masks, optimizer,
                             mask_bits=1 if impl.endswith("bitmask") else 8)
    extra = {}
    if impl in FUSED:  # same parameters, the dense optimizer's own state: time both alternately
        extra["paired_vs_dense"] = paired_ratio(_dense_step(optimizer, params, masks), step)
    record(benchmark, bytes_moved=bytes_moved, baseline_s=baseline, baseline_label="unfused_masked", label=impl, model=model,
           optimizer=optimizer, n_tensors=len(params), n_params=sum(p.numel() for p in params),
           device=cuda_name(), **extra)
