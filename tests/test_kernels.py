"""Fused masked SGD/AdamW Triton kernels vs the PyTorch reference (dstrain.optim.functional).

Runs on the CPU under TRITON_INTERPRET=1 (set in conftest.py).  The interpreter's
chunk/block sizes are small (kernels._runtime: 256/64), so the odd-sized tensors
below span several work items and several blocks per item, and exercise the
tail masking of both.
"""
from __future__ import annotations

import math
from typing import List, Optional

import pytest
import torch
from torch import nn

from dstrain import kernels
from dstrain.kernels import masked_adamw as adamw_mod
from dstrain.kernels import masked_sgd as sgd_mod
from dstrain.kernels import pack_mask
from dstrain.optim import MaskedAdamW, MaskedSGD
from dstrain.optim.functional import masked_adamw, masked_sgd
from dstrain.optim.selfcheck import flat_views

# odd sizes, size 1, empty, multi-chunk (561 > 2 * 256), 4-D conv-like
SHAPES = [(7, 3), (1,), (0,), (17, 33), (4, 3, 3, 3), (300,)]


from mask_cases import SGD_CONFIGS
from mask_cases import assert_pruned_zero as _assert_pruned_zero
from mask_cases import for_kernel as _for_kernel
from mask_cases import random_masks as _masks


@pytest.mark.parametrize("cfg", SGD_CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("mask_kind,fmt", [("random", "bool"), ("mixed", "bit"), ("none", "bool")])
def test_sgd_matches_reference_bitwise(cfg, mask_kind, fmt):
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen) for s in SHAPES]
    ref_params = [p.clone() for p in params]
    masks = _masks(SHAPES, mask_kind, gen)
    kmasks = _for_kernel(masks, fmt)
    bufs: List[Optional[torch.Tensor]] = [None] * len(SHAPES)
    ref_bufs: List[Optional[torch.Tensor]] = [None] * len(SHAPES)
    for _ in range(3):
        grads = [torch.randn(s, generator=gen) for s in SHAPES]
        kernels.fused_masked_sgd(params, grads, bufs, kmasks, **cfg)
        masked_sgd(ref_params, grads, ref_bufs, masks, **cfg)
    for p, r in zip(params, ref_params):
        assert torch.equal(p, r)
    if cfg.get("momentum", 0):
        assert all(b is not None for b in bufs), "momentum buffers are created in the caller's list"
        for b, r in zip(bufs, ref_bufs):
            assert torch.equal(b, r)
        _assert_pruned_zero(bufs, masks)
    else:
        assert all(b is None for b in bufs), "no momentum: buffers are left alone"
    _assert_pruned_zero(params, masks)


@pytest.mark.parametrize("grad_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("fmt", ["uint8", "bit"])
def test_sgd_low_precision_grads(grad_dtype, fmt):
    gen = torch.Generator().manual_seed(1)
    cfg = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
    params = [torch.randn(s, generator=gen) for s in SHAPES]
    ref_params = [p.clone() for p in params]
    masks = _masks(SHAPES, "mixed", gen)
    bufs, ref_bufs = [None] * len(SHAPES), [None] * len(SHAPES)
    for _ in range(2):
        grads = [torch.randn(s, generator=gen).to(grad_dtype) for s in SHAPES]
        kernels.fused_masked_sgd(params, grads, bufs, _for_kernel(masks, fmt), **cfg)
        masked_sgd(ref_params, grads, ref_bufs, masks, **cfg)
    for a, b in zip(params + bufs, ref_params + ref_bufs):
        assert torch.equal(a, b)
    _assert_pruned_zero(params + bufs, masks + masks)


def test_sgd_mixed_grad_dtypes_and_first_step_per_tensor():
    """Groups with different grad dtypes, and a list where only some buffers exist yet."""
    gen = torch.Generator().manual_seed(2)
    cfg = dict(lr=0.1, momentum=0.9, dampening=0.5)
    params = [torch.randn(s, generator=gen) for s in SHAPES]
    ref_params = [p.clone() for p in params]
    masks = _masks(SHAPES, "mixed", gen)
    dtypes = [torch.float32, torch.bfloat16, torch.float16, torch.float32, torch.bfloat16, torch.float32]
    bufs = [None, torch.randn(1, generator=gen), None, None, torch.randn(SHAPES[4], generator=gen), None]
    ref_bufs = [None if b is None else b.clone() for b in bufs]
    grads = [torch.randn(s, generator=gen).to(d) for s, d in zip(SHAPES, dtypes)]
    kernels.fused_masked_sgd(params, grads, bufs, masks, **cfg)
    masked_sgd(ref_params, grads, ref_bufs, masks, **cfg)
    for a, b in zip(params + bufs, ref_params + ref_bufs):
        assert torch.equal(a, b)


def _exact_sqrt(v: torch.Tensor) -> torch.Tensor:
    """Correctly rounded fp32 sqrt (fp64 sqrt then rounding is exact for fp32 inputs).

    torch's CPU ``sqrt`` is not always correctly rounded (off by 1 ulp now and then);
    the kernels use IEEE ``sqrt_rn``, as torch's CUDA kernels do.
    """
    return v.double().sqrt().float()


def _fma(a, b, c) -> torch.Tensor:
    return (a.double() * b.double() + c.double()).float()


def _adamw_emulation(p, g, m, v, step, *, lr, beta1, beta2, eps, weight_decay, cuda_order):
    """The fp32 op sequence of torch's CPU (or CUDA) AdamW, with an exact sqrt."""
    f32 = lambda x: torch.tensor(x, dtype=torch.float32)  # noqa: E731
    g = g.float()
    p = p * f32(1 - lr * weight_decay)
    m = _fma(f32(1 - beta1), g - m, m)
    v = _fma(g * f32(1 - beta2), g, v * f32(beta2))
    neg_ss = f32(-(lr / (1 - beta1**step)))
    bc2 = f32(math.sqrt(1 - beta2**step))
    if cuda_order:
        denom = _exact_sqrt(v) * (f32(1.0) / bc2) + f32(eps)
        p = _fma(neg_ss, m / denom, p)
    else:
        denom = _exact_sqrt(v) / bc2 + f32(eps)
        p = p + (neg_ss * m) / denom
    return p, m, v


ADAMW = dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1)


@pytest.mark.parametrize("mask_kind,fmt", [("random", "bool"), ("random", "uint8"), ("random", "bit"),
                                           ("mixed", "bool"), ("mixed", "bit"), ("none", "bool")])
@pytest.mark.parametrize("grad_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_adamw_matches_reference(fmt, mask_kind, grad_dtype):
    gen = torch.Generator().manual_seed(3)
    params = [torch.randn(s, generator=gen) for s in SHAPES]
    ref_params = [p.clone() for p in params]
    m1, v1 = [torch.zeros(s) for s in SHAPES], [torch.zeros(s) for s in SHAPES]
    m2, v2 = [torch.zeros(s) for s in SHAPES], [torch.zeros(s) for s in SHAPES]
    masks = _masks(SHAPES, mask_kind, gen)
    for step in range(1, 4):
        grads = [torch.randn(s, generator=gen).to(grad_dtype) for s in SHAPES]
        steps = [step] * len(SHAPES)
        kernels.fused_masked_adamw(params, grads, m1, v1, steps, _for_kernel(masks, fmt), **ADAMW)
        masked_adamw(ref_params, grads, m2, v2, steps, masks, **ADAMW)
    for a, b in zip(m1 + v1, m2 + v2):
        assert torch.equal(a, b), "moments are bitwise equal to the reference"
    for a, b in zip(params, ref_params):
        # 1-2 ulp: torch's CPU sqrt is not always correctly rounded (see _exact_sqrt)
        torch.testing.assert_close(a, b, rtol=3e-7, atol=1e-9)
    _assert_pruned_zero(params + m1 + v1, masks * 3)


@pytest.mark.parametrize("cuda_order", [False, True])
def test_adamw_bitwise_vs_emulation(cuda_order):
    """With a correctly rounded sqrt, both op orders match their torch emulation bit for bit.

    ``cuda_order=True`` is what compiled runs on CUDA tensors use; testing it here is
    the only way to check that branch without a GPU.
    """
    gen = torch.Generator().manual_seed(4)
    n = 1000
    p, m, v = torch.randn(n, generator=gen), torch.randn(n, generator=gen) * 0.1, torch.rand(n, generator=gen) * 0.01
    g = torch.randn(n, generator=gen)
    cfg = dict(ADAMW, weight_decay=0.05)
    want = _adamw_emulation(p, g, m, v, 7, cuda_order=cuda_order, **cfg)
    kp, km, kv = p.clone(), m.clone(), v.clone()
    adamw_mod.fused_masked_adamw([kp], [g], [km], [kv], [7], [None], cuda_order=cuda_order, **cfg)
    for got, exp in zip((kp, km, kv), want):
        assert torch.equal(got, exp)


def test_adamw_per_tensor_steps_and_maximize_and_large_beta1_weight():
    """Tensors at different step counts; maximize; 1-beta1 >= 0.5 takes torch's other lerp branch."""
    gen = torch.Generator().manual_seed(5)
    cfg = dict(lr=0.02, beta1=0.3, beta2=0.99, eps=1e-6, weight_decay=0.0, maximize=True)
    params = [torch.randn(s, generator=gen) for s in SHAPES]
    ref_params = [p.clone() for p in params]
    m1 = [torch.randn(s, generator=gen) * 0.1 for s in SHAPES]
    v1 = [torch.rand(s, generator=gen) * 0.01 for s in SHAPES]
    m2, v2 = [t.clone() for t in m1], [t.clone() for t in v1]
    masks = _masks(SHAPES, "mixed", gen)
    steps = [1, 5, 2, 9, 3, 1]
    grads = [torch.randn(s, generator=gen) for s in SHAPES]
    kernels.fused_masked_adamw(params, grads, m1, v1, steps, _for_kernel(masks, "bit"), **cfg)
    masked_adamw(ref_params, grads, m2, v2, steps, masks, **cfg)
    for a, b in zip(m1 + v1, m2 + v2):
        assert torch.equal(a, b)
    # The reference's CPU sqrt is not always correctly rounded (it depends on the CPU: MKL's vector
    # sqrt), so an update can differ by 1 ulp of its own size (~lr = 0.02: ulp 1.9e-9); where the
    # parameter cancels towards 0 that is more than 2 ulp of the parameter.  atol = 2 ulp of lr.
    for a, b in zip(params, ref_params):
        torch.testing.assert_close(a, b, rtol=3e-7, atol=4e-9)
    _assert_pruned_zero(params + m1 + v1, masks * 3)


class _CountingKernel:
    """Stands in for a kernel object and counts launches (kernel[grid](...))."""

    def __init__(self, kernel):
        self.kernel, self.calls = kernel, []

    @property
    def launches(self) -> int:
        return len(self.calls)

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def run(*args, **kwargs):
            self.calls.append(kwargs)
            return launch(*args, **kwargs)

        return run


def test_one_launch_per_group_not_per_tensor(monkeypatch):
    gen = torch.Generator().manual_seed(6)
    shapes = [(5,)] * 20 + [(3, 7)] * 10 + [(0,)]
    params = [torch.randn(s, generator=gen) for s in shapes]
    grads = [torch.randn(s, generator=gen) for s in shapes]
    masks = [torch.rand(s, generator=gen) > 0.5 for s in shapes]
    sgd = _CountingKernel(sgd_mod._kernel)
    monkeypatch.setattr(sgd_mod, "_kernel", sgd)
    kernels.fused_masked_sgd(params, grads, [None] * len(shapes), masks, lr=0.1, momentum=0.9)
    assert sgd.launches == 1
    masks[3] = None  # a dense tensor joins: a second group
    kernels.fused_masked_sgd(params, grads, [None] * len(shapes), masks, lr=0.1)
    assert sgd.launches == 3
    adamw = _CountingKernel(adamw_mod._kernel)
    monkeypatch.setattr(adamw_mod, "_kernel", adamw)
    states = [torch.zeros(s) for s in shapes]
    kernels.fused_masked_adamw(params, grads, states, [s.clone() for s in states], [1] * len(shapes), masks,
                               **ADAMW)
    assert adamw.launches == 2


def test_unaligned_views_get_their_own_launch_and_the_same_numbers(monkeypatch):
    """Views at odd offsets take the kernels' unaligned variant; results still match the reference."""
    gen = torch.Generator().manual_seed(8)
    shapes = [(8, 8), (33,), (2, 3, 5), (130,)] * 2
    params = [torch.randn(s, generator=gen) for s in shapes[:4]] + flat_views(shapes[4:], torch.device("cpu"), gen)
    assert [kernels.multi_tensor.is_aligned([p]) for p in params].count(False) >= 3
    masks = [torch.rand(s, generator=gen) > 0.4 for s in shapes]
    sgd, adamw = _CountingKernel(sgd_mod._kernel), _CountingKernel(adamw_mod._kernel)
    monkeypatch.setattr(sgd_mod, "_kernel", sgd)
    monkeypatch.setattr(adamw_mod, "_kernel", adamw)

    ref = [p.clone() for p in params]
    bufs, ref_bufs = [None] * len(params), [None] * len(params)
    for _ in range(2):
        grads = [torch.randn(s, generator=gen) for s in shapes]
        kernels.fused_masked_sgd(params, grads, bufs, masks, lr=0.1, momentum=0.9, weight_decay=0.01)
        masked_sgd(ref, grads, ref_bufs, masks, lr=0.1, momentum=0.9, weight_decay=0.01)
    for a, b in zip(params + bufs, ref + ref_bufs):
        assert torch.equal(a, b)

    m, v = [torch.zeros(s) for s in shapes], [torch.zeros(s) for s in shapes]
    rm, rv = [t.clone() for t in m], [t.clone() for t in v]
    grads = [torch.randn(s, generator=gen) for s in shapes]
    kernels.fused_masked_adamw(params, grads, m, v, [1] * len(params), masks, **ADAMW)
    masked_adamw(ref, grads, rm, rv, [1] * len(params), masks, **ADAMW)
    for a, b in zip(params + m + v, ref + rm + rv):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    _assert_pruned_zero(params + m + v, masks * 3)
    # two launches per step: the aligned group and the unaligned one
    assert [kw["ALIGNED"] for kw in sgd.calls] == [True, False, True, False]
    assert [kw["ALIGNED"] for kw in adamw.calls] == [True, False]


def _sgd_args(shape=(4, 5)):
    p, g = torch.randn(shape), torch.randn(shape)
    return [p], [g], [None], [None]


@pytest.mark.parametrize("case,match", [
    ("param_noncontig", r"params\[0\] is not contiguous.*\.contiguous\(\)"),
    ("grad_noncontig", r"grads\[0\] is not contiguous.*\.contiguous\(\)"),
    ("buf_noncontig", r"momentum_buffers\[0\] is not contiguous"),
    ("mask_noncontig", r"masks\[0\] is not contiguous"),
    ("grad_shape", r"grads\[0\] has shape \(5, 4\) but its parameter has shape \(4, 5\)"),
    ("param_dtype", r"params\[0\] has dtype torch.float64"),
    ("grad_dtype", r"grads\[0\] has dtype torch.int32"),
    ("mask_dtype", r"masks\[0\] has dtype torch.float32"),
    ("bitmask_size", r"masks\[0\] packs 21 bits"),
    ("lengths", r"grads has 2 entries but params has 1"),
])
def test_sgd_rejects_bad_arguments(case, match):
    p = torch.randn(4, 5)
    g = torch.randn(4, 5)
    buf: Optional[torch.Tensor] = torch.randn(4, 5)
    mask = torch.rand(4, 5) > 0.5
    grads = [g]
    params = [p]
    if case == "param_noncontig":
        params = [torch.randn(5, 4).t()]
    elif case == "grad_noncontig":
        grads = [torch.randn(5, 4).t()]
    elif case == "buf_noncontig":
        buf = torch.randn(5, 4).t()
    elif case == "mask_noncontig":
        mask = (torch.rand(5, 4) > 0.5).t()
    elif case == "grad_shape":
        grads = [torch.randn(5, 4)]
    elif case == "param_dtype":
        params = [p.double()]
    elif case == "grad_dtype":
        grads = [g.to(torch.int32)]
    elif case == "mask_dtype":
        mask = mask.float()
    elif case == "bitmask_size":
        mask = pack_mask(torch.ones(21, dtype=torch.bool))
    elif case == "lengths":
        grads = [g, g]
    before = params[0].clone()
    with pytest.raises(ValueError, match=match):
        kernels.fused_masked_sgd(params, grads, [buf], [mask], lr=0.1, momentum=0.9)
    assert torch.equal(params[0], before), "nothing is updated when an argument is rejected"


def test_adamw_rejects_noncontiguous_state_and_bad_step():
    p, g = torch.randn(4, 5), torch.randn(4, 5)
    with pytest.raises(ValueError, match=r"exp_avg_sqs\[0\] is not contiguous.*\.contiguous\(\)"):
        kernels.fused_masked_adamw([p], [g], [torch.zeros(4, 5)], [torch.zeros(5, 4).t()], [1], [None], **ADAMW)
    with pytest.raises(ValueError, match=r"steps\[0\]=0"):
        kernels.fused_masked_adamw([p], [g], [torch.zeros(4, 5)], [torch.zeros(4, 5)], [0], [None], **ADAMW)


def _model_and_masks(seed: int):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    gen = torch.Generator().manual_seed(seed)
    masks = {}
    for name, p in model.named_parameters():
        if name.endswith("weight"):
            masks[p] = torch.rand(p.shape, generator=gen) > 0.7
    with torch.no_grad():
        for p, m in masks.items():
            p.mul_(m)
    return model, masks


def _train(optimizer_cls, backend: str, **hyper):
    model, masks = _model_and_masks(0)
    opt = optimizer_cls(model.parameters(), backend=backend, mask_source=lambda p: masks.get(p), **hyper)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randn(6, 3, 8, 8, generator=gen)
        y = torch.randint(0, 5, (6,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, masks, opt


def test_masked_sgd_triton_backend_trains_like_torch_backend():
    hyper = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
    m_triton, masks, opt = _train(MaskedSGD, "triton", **hyper)
    m_torch, _, _ = _train(MaskedSGD, "torch", **hyper)
    for a, b in zip(m_triton.parameters(), m_torch.parameters()):
        assert torch.equal(a, b)
    for p, m in masks.items():
        assert torch.equal(p[~m], torch.zeros_like(p[~m]))  # masks are keyed by m_triton's params
        assert torch.equal(opt.state[p]["momentum_buffer"][~m], torch.zeros_like(p[~m]))


def test_masked_adamw_triton_backend_trains_like_torch_backend():
    hyper = dict(lr=1e-2, weight_decay=0.05)
    m_triton, masks, opt = _train(MaskedAdamW, "triton", **hyper)
    m_torch, _, _ = _train(MaskedAdamW, "torch", **hyper)
    for a, b in zip(m_triton.parameters(), m_torch.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)
    for p, m in masks.items():
        assert torch.equal(p[~m], torch.zeros_like(p[~m]))
        assert torch.equal(opt.state[p]["exp_avg"][~m], torch.zeros_like(p[~m]))
        assert torch.equal(opt.state[p]["exp_avg_sq"][~m], torch.zeros_like(p[~m]))
