"""Mask cases, settings, parameter sets and checks shared by the fused-step tests (Triton kernels and the C++ CPU step)."""
from __future__ import annotations

from typing import List, Optional

import torch

from dstrain.kernels import pack_mask

#: SGD settings every fused step must match the reference on: plain, decay, momentum,
#: dampening, Nesterov, and maximize.
SGD_CONFIGS = [
    dict(lr=0.1),
    dict(lr=0.1, weight_decay=0.05),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.3),
    dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    dict(lr=0.05, momentum=0.8, weight_decay=0.02, dampening=0.1, maximize=True),
]


def random_masks(shapes, kind: str, gen: torch.Generator) -> List[Optional[torch.Tensor]]:
    """bool masks (None = dense) covering random, all-pruned, none-pruned and dense tensors."""
    out: List[Optional[torch.Tensor]] = []
    for i, s in enumerate(shapes):
        if kind == "none":
            out.append(None)
            continue
        m = torch.rand(s, generator=gen) > 0.6
        if i == 0:
            m = torch.zeros(s, dtype=torch.bool)  # all pruned
        if i == 4:
            m = torch.ones(s, dtype=torch.bool)  # nothing pruned
        if kind == "mixed" and i in (1, 5):
            m = None
        out.append(m)
    return out


def for_kernel(masks, fmt: str):
    """The same masks in the format handed to the kernel: bool, uint8 or packed bits."""
    conv = {"bool": lambda m: m, "uint8": lambda m: m.to(torch.uint8), "bit": pack_mask}[fmt]
    return [None if m is None else conv(m) for m in masks]


def assert_pruned_zero(tensors, masks) -> None:
    for t, m in zip(tensors, masks):
        if m is not None and t is not None:
            pruned = t[~m]
            assert torch.equal(pruned, torch.zeros_like(pruned)), "pruned entries must be exactly 0"
            assert not torch.signbit(pruned).any(), "pruned entries are written as +0.0"


#: A small parameter set with conv/linear weights (masked) and biases (dense), and the
#: optimizer settings the prepared-step tests (test_optim_triton_step.py, test_optim_cpu_step.py) use.
STEP_SHAPES = [(6, 5), (6,), (4, 3, 3, 3), (4,), (3, 7), (300,)]
STEP_SGD_HYPER = dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)
STEP_ADAMW_HYPER = dict(lr=1e-2, weight_decay=0.05)


def masked_params(seed: int = 0):
    """STEP_SHAPES parameters, pruned by random bool masks on every weight; returns (params, {id(param): mask})."""
    gen = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in STEP_SHAPES]
    masks = {id(p): torch.rand(p.shape, generator=gen) > 0.5 for p in params if p.dim() > 1}
    with torch.no_grad():
        for p in params:
            if id(p) in masks:
                p.mul_(masks[id(p)])
    return params, masks


def set_grads(params, gen: torch.Generator, new_tensors: bool) -> None:
    """Random gradients: new tensors (new addresses, as after zero_grad(set_to_none=True)) or written in place."""
    for p in params:
        g = torch.randn(p.shape, generator=gen)
        if new_tensors or p.grad is None:
            p.grad = g
        else:
            p.grad.copy_(g)
