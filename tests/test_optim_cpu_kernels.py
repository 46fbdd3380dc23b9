"""The fused C++ CPU step (dstrain.optim.cpu_kernels, backend='cpu') vs the PyTorch reference.

SGD must be bitwise equal to :mod:`dstrain.optim.functional`; AdamW's moments too, and
its parameters bitwise equal to the reference with a correctly rounded sqrt (torch's
CPU sqrt is MKL's, off by an ulp now and then), hence within 1-2 ulp of the reference
itself.  Pruned entries must be +0.0 in the parameter and every state buffer.

The extension is built once per checkout (``TORCH_EXTENSIONS_DIR`` is set in
conftest.py) by the first test that needs it; the fixture fails, rather than skips,
when it cannot be built, since CI has a compiler and ninja.
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import List, Optional

import pytest
import torch

from dstrain import load_recipe
from dstrain.errors import ConfigError
from dstrain.kernels import pack_mask
from dstrain.optim import MaskedAdamW, MaskedSGD, cpu_kernels
from dstrain.optim.functional import (
    _as_param_dtype,
    _zero_pruned,
    masked_adamw,
    masked_sgd,
)

REPO = Path(__file__).resolve().parent.parent
# odd sizes, size 1, empty, 4-D conv-like, and one spanning two 65536-element work items
# with a partial last block (kernel constants kChunk / kBlock)
SHAPES = [(7, 3), (1,), (0,), (17, 33), (4, 3, 3, 3), (300,), (70001,)]


@pytest.fixture(scope="module", autouse=True)
def built():
    assert cpu_kernels.available(), "the C++ CPU step must build here (compiler and ninja are installed)"


from mask_cases import SGD_CONFIGS
from mask_cases import assert_pruned_zero as _assert_pruned_zero
from mask_cases import for_kernel as _fmt
from mask_cases import random_masks as _masks


def _equal(a: Optional[torch.Tensor], b: Optional[torch.Tensor]) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))


@pytest.mark.parametrize("cfg", SGD_CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("grad_dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("kind,fmt", [("random", "bool"), ("random", "uint8"), ("mixed", "bit"), ("none", "bool")])
def test_sgd_bitwise_equal_to_reference(cfg, grad_dtype, kind, fmt):
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen) for s in SHAPES]
    ref_params = [p.clone() for p in params]
    masks = _masks(SHAPES, kind, gen)
    bufs: List[Optional[torch.Tensor]] = [None] * len(SHAPES)
    ref_bufs: List[Optional[torch.Tensor]] = [None] * len(SHAPES)
    for _ in range(3):
        grads = [torch.randn(s, generator=gen).to(grad_dtype) for s in SHAPES]
        cpu_kernels.fused_masked_sgd_cpu(params, grads, bufs, _fmt(masks, fmt), **cfg)
        masked_sgd(ref_params, grads, ref_bufs, masks, **cfg)
    for p, r in zip(params, ref_params):
        assert torch.equal(p, r)
    for b, r in zip(bufs, ref_bufs):
        assert _equal(b, r), "momentum buffers are created in the caller's list and match"
    _assert_pruned_zero(params + bufs, masks * 2)


def _adamw_exact_sqrt(params, grads, exp_avgs, exp_avg_sqs, steps, masks, *, lr, beta1, beta2, eps,
                      weight_decay, maximize=False):
    """functional.masked_adamw with one change: a correctly rounded sqrt (fp64 sqrt, rounded once)."""
    for i, param in enumerate(params):
        grad = _as_param_dtype(grads[i], param, maximize)
        exp_avg, exp_avg_sq, step = exp_avgs[i], exp_avg_sqs[i], steps[i]
        param.mul_(1 - lr * weight_decay)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step_size = lr / (1 - beta1**step)
        denom = (exp_avg_sq.double().sqrt().float() / math.sqrt(1 - beta2**step)).add_(eps)
        param.addcdiv_(exp_avg, denom, value=-step_size)
        _zero_pruned(masks[i], param, exp_avg, exp_avg_sq)


ADAMW_CONFIGS = [
    dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1),
    # 1 - beta1 >= 0.5 takes torch's other lerp branch; maximize; no decay
    dict(lr=0.02, beta1=0.3, beta2=0.99, eps=1e-6, weight_decay=0.0, maximize=True),
]


@pytest.mark.parametrize("cfg", ADAMW_CONFIGS, ids=["default", "beta1=0.3-maximize"])
@pytest.mark.parametrize("grad_dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("kind,fmt", [("random", "bool"), ("random", "uint8"), ("mixed", "bit"), ("none", "bool")])
def test_adamw_matches_reference(cfg, grad_dtype, kind, fmt):
    gen = torch.Generator().manual_seed(3)
    params = [torch.randn(s, generator=gen) for s in SHAPES]
    ref, exact = [p.clone() for p in params], [p.clone() for p in params]
    state = {name: [[torch.zeros(s) for s in SHAPES] for _ in range(2)] for name in ("cpu", "ref", "exact")}
    masks = _masks(SHAPES, kind, gen)
    for step in range(1, 4):
        grads = [torch.randn(s, generator=gen).to(grad_dtype) for s in SHAPES]
        steps = [step] * len(SHAPES)
        cpu_kernels.fused_masked_adamw_cpu(params, grads, *state["cpu"], steps, _fmt(masks, fmt), **cfg)
        masked_adamw(ref, grads, *state["ref"], steps, masks, **cfg)
        _adamw_exact_sqrt(exact, grads, *state["exact"], steps, masks, **cfg)
    (m, v), (rm, rv), (em, ev) = state["cpu"], state["ref"], state["exact"]
    for a, b in zip(m + v, rm + rv):
        assert torch.equal(a, b), "moments are bitwise equal to the reference"
    for a, b in zip(m + v + params, em + ev + exact):
        assert torch.equal(a, b), "bitwise equal to the reference with a correctly rounded sqrt"
    for a, b in zip(params, ref):
        # an ulp of sqrt moves the update by about an ulp of the update (|update| <= lr / (1 - beta1) = 0.1,
        # ulp 7.5e-9): 1-2 ulp of the parameter, more only where the update cancels most of it
        torch.testing.assert_close(a, b, rtol=3e-7, atol=1e-8)
    _assert_pruned_zero(params + m + v, masks * 3)


def test_adamw_per_tensor_steps():
    gen = torch.Generator().manual_seed(5)
    cfg = ADAMW_CONFIGS[0]
    params = [torch.randn(s, generator=gen) for s in SHAPES]
    exact = [p.clone() for p in params]
    m1 = [torch.randn(s, generator=gen) * 0.1 for s in SHAPES]
    v1 = [torch.rand(s, generator=gen) * 0.01 for s in SHAPES]
    m2, v2 = [t.clone() for t in m1], [t.clone() for t in v1]
    masks = _masks(SHAPES, "mixed", gen)
    steps = [1, 5, 2, 9, 3, 1, 40]
    grads = [torch.randn(s, generator=gen) for s in SHAPES]
    cpu_kernels.fused_masked_adamw_cpu(params, grads, m1, v1, steps, _fmt(masks, "bit"), **cfg)
    _adamw_exact_sqrt(exact, grads, m2, v2, steps, masks, **cfg)
    for a, b in zip(params + m1 + v1, exact + m2 + v2):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r"steps\[0\]=0"):
        cpu_kernels.fused_masked_adamw_cpu(params, grads, m1, v1, [0] * len(SHAPES), masks, **cfg)


def test_two_threads_give_the_same_bits():
    """Work items split across threads: elementwise, so the thread count cannot change a bit."""
    gen = torch.Generator().manual_seed(7)
    shapes = [(300, 257), (70001,), (5,)]
    params = [torch.randn(s, generator=gen) for s in shapes]
    ref = [p.clone() for p in params]
    grads = [torch.randn(s, generator=gen) for s in shapes]
    masks = [torch.rand(s, generator=gen) > 0.5 for s in shapes]
    bufs, ref_bufs = [None] * 3, [None] * 3
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for _ in range(2):
            cpu_kernels.fused_masked_sgd_cpu(params, grads, bufs, masks, lr=0.1, momentum=0.9, nesterov=True)
    finally:
        torch.set_num_threads(threads)
    for _ in range(2):
        masked_sgd(ref, grads, ref_bufs, masks, lr=0.1, momentum=0.9, nesterov=True)
    for a, b in zip(params + bufs, ref + ref_bufs):
        assert torch.equal(a, b)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 cores")
def test_the_step_really_runs_on_torch_threads():
    """The build must keep OpenMP: without -fopenmp at::parallel_for silently ran on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert cpu_kernels._ops.parallel_threads(64) == 2
    finally:
        torch.set_num_threads(threads)
    assert cpu_kernels._ops.parallel_threads(64) == threads


def test_channels_last_and_strided_tensors():
    """Channels-last (dense, same strides everywhere) runs in the kernel; other layouts go to the reference."""
    gen = torch.Generator().manual_seed(8)
    conv = torch.randn(8, 3, 5, 5, generator=gen).to(memory_format=torch.channels_last)
    strided = torch.randn(20, 30, generator=gen)[:, ::2]  # not dense: the reference updates it
    mixed_grad = torch.randn(6, 4, generator=gen)  # its grad is transposed: other strides than the param
    params = [conv, strided, mixed_grad, torch.randn(8, 3, 5, 5, generator=gen).to(memory_format=torch.channels_last)]
    ref = [p.clone(memory_format=torch.preserve_format) for p in params]
    grads = [torch.randn(p.shape, generator=gen).to(memory_format=torch.channels_last) if p.dim() == 4
             else torch.randn(p.shape, generator=gen) for p in params]
    grads[2] = torch.randn(4, 6, generator=gen).t()
    masks = [(torch.rand(p.shape, generator=gen) > 0.5) for p in params]
    masks[0] = masks[0].to(memory_format=torch.channels_last)
    kmasks = list(masks)
    kmasks[3] = pack_mask(masks[3])  # bit mask on a channels-last param: logical bit order, so the reference
    bufs, ref_bufs = [None] * 4, [None] * 4
    for _ in range(2):
        cpu_kernels.fused_masked_sgd_cpu(params, grads, bufs, kmasks, lr=0.1, momentum=0.9, weight_decay=0.01)
        masked_sgd(ref, grads, ref_bufs, masks, lr=0.1, momentum=0.9, weight_decay=0.01)
    for a, b in zip(params + bufs, ref + ref_bufs):
        assert torch.equal(a, b)
    assert bufs[0].is_contiguous(memory_format=torch.channels_last), "state is laid out like its parameter"
    _assert_pruned_zero(params + bufs, masks * 2)

    m, v = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
    rm, rv = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
    em, ev = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
    ref = [p.clone(memory_format=torch.preserve_format) for p in params]
    exact = [p.clone(memory_format=torch.preserve_format) for p in params]
    cpu_kernels.fused_masked_adamw_cpu(params, grads, m, v, [1] * 4, kmasks, **ADAMW_CONFIGS[0])
    masked_adamw(ref, grads, rm, rv, [1] * 4, masks, **ADAMW_CONFIGS[0])
    _adamw_exact_sqrt(exact, grads, em, ev, [1] * 4, masks, **ADAMW_CONFIGS[0])
    # tensor 0 went through the kernel (correctly rounded sqrt), 1-3 through the reference (torch's sqrt)
    assert torch.equal(params[0], exact[0]) and torch.equal(m[0], em[0]) and torch.equal(v[0], ev[0])
    for i in (1, 2, 3):
        assert torch.equal(params[i], ref[i]) and torch.equal(m[i], rm[i]) and torch.equal(v[i], rv[i])
    _assert_pruned_zero(params + m + v, masks * 3)


def test_bad_input_is_refused_before_anything_is_written():
    gen = torch.Generator().manual_seed(9)
    params = [torch.randn(5, 4, generator=gen), torch.randn(3, generator=gen)]
    before = [p.clone() for p in params]
    grads = [torch.randn(5, 4, generator=gen), torch.randn(3, generator=gen)]
    bufs: List[Optional[torch.Tensor]] = [None, None]
    cases = [
        (dict(grads=[grads[0], torch.randn(4, generator=gen)]), r"grads\[1\] has shape"),
        (dict(grads=[grads[0], grads[1].double()]), r"grads\[1\] has dtype"),
        (dict(params=[params[0], params[1].double()]), r"params\[1\] has dtype .* backend='torch'"),
        (dict(masks=[torch.ones(5, 4), None]), r"masks\[0\] has dtype"),
        (dict(masks=[None, torch.ones(4, dtype=torch.bool)]), r"masks\[1\] has shape"),
        (dict(masks=[pack_mask(torch.ones(100, dtype=torch.bool)), None]), r"masks\[0\] has 4 int32 words"),
    ]
    for change, message in cases:
        kw = dict(params=params, grads=grads, masks=[None, None], **{})
        kw.update(change)
        with pytest.raises(ValueError, match=message):
            cpu_kernels.fused_masked_sgd_cpu(kw["params"], kw["grads"], bufs, kw["masks"], lr=0.1, momentum=0.9)
        assert bufs == [None, None], "buffers allocated for the call are taken back"
    with pytest.raises(ValueError, match=r"exp_avg_sqs\[0\] has dtype"):
        cpu_kernels.fused_masked_adamw_cpu(params, grads, [torch.zeros(5, 4), torch.zeros(3)],
                                           [torch.zeros(5, 4).double(), torch.zeros(3)], [1, 1], [None, None],
                                           **ADAMW_CONFIGS[0])
    for p, b in zip(params, before):
        assert torch.equal(p, b)


def _masked_model_steps(opt_cls, backend: str, steps: int = 4, **hyper):
    gen = torch.Generator().manual_seed(11)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 10))
    model = model.to(memory_format=torch.channels_last)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    masks = {id(p): torch.rand(p.shape, generator=gen) > 0.7 for p in model.parameters() if p.dim() > 1}
    masks = {k: m.to(memory_format=torch.channels_last) if m.dim() == 4 else m for k, m in masks.items()}
    opt = opt_cls(model.parameters(), backend=backend, mask_source=lambda p: masks.get(id(p)), **hyper)
    x = torch.randn(16, 3, 8, 8, generator=gen).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (16,), generator=gen)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return [p.detach() for p in model.parameters()], opt, masks


@pytest.mark.parametrize("opt_cls,hyper", [(MaskedSGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)),
                                           (MaskedAdamW, dict(lr=1e-2, weight_decay=0.1))])
def test_optimizer_backend_cpu_matches_torch_and_auto_picks_it(opt_cls, hyper):
    got, opt, masks = _masked_model_steps(opt_cls, "cpu", **hyper)
    want, ref_opt, _ = _masked_model_steps(opt_cls, "torch", **hyper)
    for g, w in zip(got, want):
        if opt_cls is MaskedSGD:
            assert torch.equal(g, w)
        else:
            torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-7)
    for p, state in opt.state.items():
        for key, value in state.items():
            if torch.is_tensor(value) and value.dim() > 0 and id(p) in masks:
                _assert_pruned_zero([value], [masks[id(p)]])
    assert opt.resolve_backend(list(opt.param_groups[0]["params"])) == "cpu"
    auto = opt_cls(list(opt.param_groups[0]["params"]), backend="auto", **hyper)
    assert auto.resolve_backend(list(auto.param_groups[0]["params"])) == "cpu"
    assert auto.resolve_backend([torch.zeros(3, dtype=torch.float64)]) == "torch", "non-fp32 params: reference"


def test_no_compiler_falls_back_to_the_reference_with_one_warning(monkeypatch):
    monkeypatch.setattr(cpu_kernels, "_ops", None)
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    gen = torch.Generator().manual_seed(12)
    params = [torch.randn(9, 7, generator=gen)]
    ref = [params[0].clone()]
    grads = [torch.randn(9, 7, generator=gen)]
    mask = [torch.rand(9, 7, generator=gen) > 0.5]
    with pytest.warns(RuntimeWarning, match=r"could not be built \(no C\+\+ compiler '/nonexistent/c\+\+'"):
        assert not cpu_kernels.available()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning, not one per step
        cpu_kernels.fused_masked_sgd_cpu(params, grads, [None], [pack_mask(mask[0])], lr=0.1)
        opt = MaskedSGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
        assert opt.resolve_backend(opt.param_groups[0]["params"]) == "torch"
    masked_sgd(ref, grads, [None], mask, lr=0.1)
    assert torch.equal(params[0], ref[0])


def test_recipe_accepts_backend_cpu_and_names_the_choices():
    recipe = load_recipe(REPO / "recipes" / "digits_gmp90.yaml", {"optimizer.backend": "cpu"})
    assert recipe.optimizer.backend == "cpu"
    with pytest.raises(ConfigError, match="cpu"):
        load_recipe(REPO / "recipes" / "digits_gmp90.yaml", {"optimizer.backend": "cuda"})


@pytest.mark.parametrize("optimizer", [{"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
                                       {"name": "adamw", "lr": 1e-3, "weight_decay": 0.01}])
def test_default_model_cpu_backend_matches_torch(tmp_path, optimizer):
    from helpers import train_default_model_per_backend

    states = train_default_model_per_backend(tmp_path, optimizer, ("torch", "cpu"))
    for key, expected in states["torch"].items():
        got = states["cpu"][key]
        if key.startswith("m/") or optimizer["name"] == "sgd":
            assert torch.equal(expected, got), key
        else:
            # AdamW: within an ulp where torch's CPU (MKL) sqrt is not correctly rounded
            torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7, msg=key)
