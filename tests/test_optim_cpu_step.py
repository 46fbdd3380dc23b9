"""The C++ CPU step's host side (dstrain.optim.cpu_step.CpuPlan): prepared once, checked every step.

What a steady-state CPU step may do is pinned here, so a change that brings back the
per-parameter Python of the plain path (an ``.item()`` and a new step tensor per
parameter, mask storages per step) fails: none of that once the plan exists, the same
bits as the plain C++ path throughout, and a rebuild whenever what the plan holds
changes (mask tensors, gradients appearing or vanishing, state replaced as DeepSpeed's
ZeRO restore does, a state_dict load, momentum switched on).
"""
from __future__ import annotations

import copy

import pytest
import torch
from mask_cases import STEP_ADAMW_HYPER, STEP_SGD_HYPER, masked_params, set_grads

from dstrain.optim import MaskedAdamW, MaskedSGD, cpu_kernels

OPTIMIZERS = [(MaskedSGD, STEP_SGD_HYPER), (MaskedAdamW, STEP_ADAMW_HYPER)]


@pytest.fixture(autouse=True)
def built():
    if not cpu_kernels.available():
        pytest.skip("the C++ CPU step cannot be built here (no compiler)")


def _twin(params, masks):
    twin = [torch.nn.Parameter(p.detach().clone()) for p in params]
    twin_masks = {id(t): masks[id(p)].clone() for p, t in zip(params, twin) if id(p) in masks}
    return twin, twin_masks


def _plain_cpu_step(opt) -> None:
    """The same optimizer stepped without a plan (what every step did before plans)."""
    opt._cpu_plans.clear()
    opt._cpu_step = lambda index, group: False  # instance attribute: the plain C++ path only
    opt.step()


def _assert_same(a_params, b_params, a_opt, b_opt) -> None:
    for a, b in zip(a_params, b_params):
        assert torch.equal(a, b)
        for key, value in a_opt.state[a].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b_opt.state[b][key])), key


@pytest.mark.parametrize("cls,hyper", OPTIMIZERS)
def test_planned_steps_equal_plain_steps_bit_for_bit(cls, hyper):
    params, masks = masked_params()
    twin, twin_masks = _twin(params, masks)
    opt = cls(params, backend="cpu", mask_source=lambda p: masks.get(id(p)), **hyper)
    plain = cls(twin, backend="cpu", mask_source=lambda p: twin_masks.get(id(p)), **hyper)
    gen, twin_gen = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for step in range(6):
        if step == 3:  # an in-place mask change (the registry's way) applies on the next step
            masks[id(params[0])][0, :] = False
            twin_masks[id(twin[0])][0, :] = False
        opt.param_groups[0]["lr"] *= 0.9  # a scheduler changes lr every step: scalars follow
        plain.param_groups[0]["lr"] *= 0.9
        set_grads(params, gen, new_tensors=True)
        set_grads(twin, twin_gen, new_tensors=True)
        opt.step()
        _plain_cpu_step(plain)
    assert opt._cpu_plans, "steps after the first run through a plan"
    _assert_same(params, twin, opt, plain)
    assert torch.equal(params[0][0], torch.zeros(5))


@pytest.mark.parametrize("cls,hyper", OPTIMIZERS)
def test_steady_state_step_has_no_per_parameter_tensor_calls(cls, hyper, monkeypatch):
    params, masks = masked_params()
    opt = cls(params, backend="cpu", mask_source=lambda p: masks.get(id(p)), **hyper)
    gen = torch.Generator().manual_seed(2)
    for _ in range(2):
        set_grads(params, gen, new_tensors=True)
        opt.step()
    plan = opt._cpu_plans[0]
    calls = {"item": 0, "__float__": 0, "__int__": 0, "__add__": 0, "mask_storage": 0}
    for name in ("item", "__float__", "__int__", "__add__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    import dstrain.kernels.bitmask as bitmask

    original_storage = bitmask.mask_storage

    def counted_storage(mask):
        calls["mask_storage"] += 1
        return original_storage(mask)

    monkeypatch.setattr(bitmask, "mask_storage", counted_storage)
    for _ in range(3):
        set_grads(params, gen, new_tensors=True)
        opt.step()
    assert opt._cpu_plans[0] is plan, "the plan is kept while the tensors stay the same"
    assert calls == dict.fromkeys(calls, 0)
    if cls is MaskedAdamW:
        assert [float(opt.state[p]["step"]) for p in params] == [5.0] * len(params)


@pytest.mark.parametrize("cls,hyper", OPTIMIZERS)
def test_replaced_state_new_masks_and_vanishing_grads_rebuild_the_plan(cls, hyper):
    params, masks = masked_params()
    twin, twin_masks = _twin(params, masks)
    opt = cls(params, backend="cpu", mask_source=lambda p: masks.get(id(p)), **hyper)
    ref = cls(twin, backend="torch", mask_source=lambda p: twin_masks.get(id(p)), **hyper)
    gen, twin_gen = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)

    def both(change=None):
        set_grads(params, gen, new_tensors=True)
        set_grads(twin, twin_gen, new_tensors=True)
        if change is not None:
            change()
        before = opt._cpu_plans.get(0)
        opt.step()
        ref.step()
        return before is not None and opt._cpu_plans.get(0) is before

    both()  # creates the state
    both()  # builds the plan
    assert both(), "a plain step keeps the plan"
    key = "momentum_buffer" if cls is MaskedSGD else "exp_avg"

    def replace_state():  # as DeepSpeed's _restore_base_optimizer_state assigns state[p][key]
        for a, b in ((opt, params[2]), (ref, twin[2])):
            a.state[b][key] = a.state[b][key].clone()
    assert not both(replace_state), "a replaced state tensor is seen"

    def new_mask():
        masks[id(params[4])] = masks[id(params[4])].clone()
        masks[id(params[4])][:, 0] = False
        twin_masks[id(twin[4])][:, 0] = False
    assert not both(new_mask)

    def drop_grads():
        params[1].grad = None
        twin[1].grad = None
    assert not both(drop_grads)
    assert both(drop_grads), "the same gradient-less tensors again keep the new plan"
    for a, b in zip(params, twin):
        torch.testing.assert_close(a, b, rtol=2e-6, atol=1e-7)  # AdamW: within the C++ kernel's 1-2 ulp
    for p in params:
        if id(p) in masks:
            pruned = ~masks[id(p)]
            assert torch.equal(p[pruned], torch.zeros_like(p[pruned]))
            for value in opt.state[p].values():
                if torch.is_tensor(value) and value.shape == p.shape:
                    assert torch.equal(value[pruned], torch.zeros_like(value[pruned]))


def test_state_dict_roundtrip_and_momentum_switched_on():
    params, masks = masked_params()
    opt = MaskedAdamW(params, backend="cpu", mask_source=lambda p: masks.get(id(p)), **STEP_ADAMW_HYPER)
    twin, twin_masks = _twin(params, masks)
    other = MaskedAdamW(twin, backend="cpu", mask_source=lambda p: twin_masks.get(id(p)), **STEP_ADAMW_HYPER)
    gen, twin_gen = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    for _ in range(3):
        set_grads(params, gen, new_tensors=True)
        set_grads(twin, twin_gen, new_tensors=True)
        opt.step()
        other.step()
    other.load_state_dict(copy.deepcopy(opt.state_dict()))  # as from disk: the plan must go
    assert not other._cpu_plans
    for _ in range(2):
        set_grads(params, gen, new_tensors=True)
        set_grads(twin, twin_gen, new_tensors=True)
        opt.step()
        other.step()
    _assert_same(params, twin, opt, other)
    assert [float(other.state[p]["step"]) for p in twin] == [5.0] * len(twin)

    sgd_params, sgd_masks = masked_params()
    sgd = MaskedSGD(sgd_params, backend="cpu", mask_source=lambda p: sgd_masks.get(id(p)), lr=0.05)
    for _ in range(2):
        set_grads(sgd_params, gen, new_tensors=True)
        sgd.step()
    sgd.param_groups[0]["momentum"] = 0.9  # momentum appears: buffers must be created, not assumed
    for _ in range(2):
        set_grads(sgd_params, gen, new_tensors=True)
        sgd.step()
    assert all(torch.is_tensor(sgd.state[p].get("momentum_buffer")) for p in sgd_params)
