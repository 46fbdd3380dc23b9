"""Host time of one Triton optimizer step, kernel launches stubbed: what Python costs per step.

Why its own row: a fused step of BERT-base is ~1 ms of GPU time at copy bandwidth, so
milliseconds of per-parameter Python in ``step()`` would cap it whatever the kernels
do.  Here every launch is recorded instead of run (``dstrain.kernels._runtime.stubbed_launches``),
so the time is the host work alone and can be measured on any machine, CPU included:

    DSTRAIN_BENCH_DEVICE=cpu python3 -m pytest benchmarks/test_bench_host.py --benchmark-only

Rows, per parameter set (ResNet50: 161 tensors, BERT-base: 199; 90% masks on weights):

* ``optimizer_step``: ``MaskedSGD/MaskedAdamW(backend='triton').step()`` in steady state
  (gradients at fixed addresses, as when ``zero_grad(set_to_none=False)`` or the caching
  allocator hands the same blocks back);
* ``optimizer_step_moving_grads``: the same with every gradient at a new address each
  step (the plan rewrites the gradient table row);
* ``functional_call``: ``dstrain.kernels.fused_masked_*`` called directly, which checks every
  argument and groups the tensors on each call: the host cost every step paid before
  the optimizers kept a plan.

Target: optimizer_step <= 0.2 ms on both sets.  A measurement, not an assertion.
"""
from __future__ import annotations

import pytest
import torch

from common import DEVICE, ROUNDS, cuda_name, make_masks, model_shapes
from dstrain.optim import MaskedAdamW, MaskedSGD
from dstrain.kernels import _runtime

HYPER = {"sgd": dict(lr=0.1, momentum=0.9, weight_decay=1e-4), "adamw": dict(lr=1e-3, weight_decay=0.01)}
HOST_ROUNDS = max(ROUNDS, 200)


def _params(shapes):
    """Parameters and gradients with real shapes; values do not matter (nothing is launched)."""
    params = [torch.nn.Parameter(torch.zeros(s, device=DEVICE)) for s in shapes]
    for p in params:
        p.grad = torch.zeros_like(p)
    return params


def _optimizer_step(optimizer, params, masks, moving: bool):
    by_id = {id(p): m for p, m in zip(params, masks)}
    cls = MaskedSGD if optimizer == "sgd" else MaskedAdamW
    opt = cls(params, backend="triton", mask_source=lambda p: by_id.get(id(p)), **HYPER[optimizer])
    spare = [torch.zeros_like(p) for p in params] if moving else None

    def swap_grads():  # untimed setup: the new addresses come from the backward pass, not from step()
        nonlocal spare
        old = [p.grad for p in params]
        for p, g in zip(params, spare):
            p.grad = g
        spare = old

    return opt.step, (swap_grads if moving else None)


def _functional_call(optimizer, params, masks):
    from dstrain import kernels

    grads = [p.grad for p in params]
    if optimizer == "sgd":
        bufs = [torch.zeros_like(p) for p in params]
        return lambda: kernels.fused_masked_sgd(params, grads, bufs, masks, **HYPER["sgd"]), None
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    steps = [1] * len(params)
    return lambda: kernels.fused_masked_adamw(params, grads, m, v, steps, masks, lr=1e-3, beta1=0.9, beta2=0.999,
                                              eps=1e-8, weight_decay=0.01), None


IMPLS = {
    "optimizer_step": lambda o, p, m: _optimizer_step(o, p, m, moving=False),
    "optimizer_step_moving_grads": lambda o, p, m: _optimizer_step(o, p, m, moving=True),
    "functional_call": _functional_call,
}


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("model", ["resnet50", "bert_base"])
def test_host_time_per_step(benchmark, model, optimizer, impl):
    params = _params(model_shapes(model))
    masks = make_masks(params)
    with _runtime.stubbed_launches() as launches:
        step, setup = IMPLS[impl](optimizer, params, masks)
        for _ in range(3):  # first steps build the plan (and, for SGD, its post-first-step variant)
            if setup:
                setup()
            step()
        launches.clear()
        benchmark.group = f"{model}-{optimizer}-host"
        benchmark.pedantic(step, setup=setup, rounds=HOST_ROUNDS, warmup_rounds=5, iterations=1)
        per_step = len(launches) / (HOST_ROUNDS + 5)
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(
        label=f"host: {impl}", median_ms=median * 1e3, host_ms=median * 1e3, launches_per_step=per_step,
        model=model, optimizer=optimizer, n_tensors=len(params), n_params=sum(p.numel() for p in params),
        device=cuda_name(), threads=torch.get_num_threads())
