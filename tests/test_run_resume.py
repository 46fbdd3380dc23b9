"""dstrain.run.resume: which recipe changes a resume accepts.

``optimizer.backend`` may change on resume only where every backend computes the same
bits: SGD (proved below against the reference, the C++ step and the Triton kernels run
by the interpreter); AdamW's parameters differ by 1-2 ulp between backends, so there
the change is refused.
"""
import copy

import pytest
import torch
from helpers import TINY

from dstrain import ConfigError
from dstrain.optim import MaskedSGD
from dstrain.run.resume import check_recipe, recipe_differences


def _sgd_run(backend: str):
    torch.manual_seed(0)
    shapes = [(8, 5), (33,), (4, 3, 3, 3)]
    params = [torch.randn(s, requires_grad=True) for s in shapes]
    masks = [torch.rand(s) > 0.5 for s in shapes]
    opt = MaskedSGD([{"params": params[:2]}, {"params": params[2:], "weight_decay": 0.0}], lr=0.1, momentum=0.9,
                    nesterov=True, weight_decay=5e-4, backend=backend,
                    mask_source=lambda p: masks[[id(q) for q in params].index(id(p))])
    gen = torch.Generator().manual_seed(1)
    for _ in range(4):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
    return [p.detach().clone() for p in params] + [opt.state[p]["momentum_buffer"].clone() for p in params]


def test_sgd_is_bit_identical_on_every_backend():
    reference = _sgd_run("torch")
    for backend in ("cpu", "triton"):
        for a, b in zip(reference, _sgd_run(backend)):
            assert torch.equal(a, b), backend


def _recipe(name: str, backend: str) -> dict:
    data = copy.deepcopy(TINY)
    data["optimizer"] = {**data["optimizer"], "name": name, "backend": backend}
    if name == "adamw":
        data["optimizer"].pop("nesterov")
        data["optimizer"].pop("momentum")
    return data


def test_backend_may_change_on_resume_for_sgd_only(tmp_path):
    assert recipe_differences(_recipe("sgd", "torch"), _recipe("sgd", "cpu")) == []
    assert recipe_differences(_recipe("adamw", "torch"), _recipe("adamw", "cpu")) == [
        ("optimizer.backend", "torch", "cpu")]
    with pytest.raises(ConfigError, match=r"optimizer\.backend: 'auto' -> 'torch'"):
        check_recipe(tmp_path / "step000000010", _recipe("adamw", "auto"), _recipe("adamw", "torch"))
