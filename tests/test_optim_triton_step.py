"""The Triton optimizer step's host side: what a steady-state step may and may not do in Python.

Host time per step is measured in benchmarks/test_bench_host.py; these tests pin the
structure that keeps it low, so a change that brings back per-parameter work fails
here: no ``.item()``/``float()``/``int()`` on a tensor (each is a device sync on a GPU),
no argument re-checks and no table rebuilds while the tensors stay put; a gradient row
patched (not rebuilt) when gradients move; a rebuild when parameters, mask tensors or
the optimizer state change; and the same numbers as the PyTorch backend throughout.
Kernels run under the Triton interpreter (tests/conftest.py) on tiny tensors.
"""
from __future__ import annotations

import copy

import pytest
import torch
from mask_cases import STEP_ADAMW_HYPER, STEP_SGD_HYPER, masked_params, set_grads

import dstrain.kernels.masked_adamw as adamw_mod
import dstrain.kernels.masked_sgd as sgd_mod
import dstrain.kernels.multi_tensor as mt
from dstrain.kernels import _runtime
from dstrain.optim import MaskedAdamW, MaskedSGD


class _Counter:
    """Wraps a function and counts its calls; binds like a function when set as a method."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)

    def __get__(self, obj, objtype=None):
        return self if obj is None else (lambda *args, **kwargs: self(obj, *args, **kwargs))


@pytest.fixture
def counters(monkeypatch):
    """Counts table builds, argument checks, table patches and tensor-to-Python conversions."""
    found = {}
    for name in ("build_work_list",):
        found[name] = _Counter(getattr(mt, name))
        monkeypatch.setattr(mt, name, found[name])
    for mod in (sgd_mod, adamw_mod):
        for name in ("check_param", "check_like", "check_mask"):
            counter = found.setdefault(name, _Counter(getattr(mod, name)))
            monkeypatch.setattr(mod, name, counter)
    found["set_role"] = _Counter(mt.LaunchGroup.set_role)
    monkeypatch.setattr(mt.LaunchGroup, "set_role", found["set_role"])
    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        found[name] = _Counter(getattr(torch.Tensor, name))
        monkeypatch.setattr(torch.Tensor, name, found[name])
    return found


def _reset(counters):
    for c in counters.values():
        c.calls = 0


SYNC_LIKE = ("item", "tolist", "__float__", "__int__", "__bool__")
CHECKS = ("check_param", "check_like", "check_mask")


@pytest.mark.parametrize("cls,hyper", [(MaskedSGD, STEP_SGD_HYPER), (MaskedAdamW, STEP_ADAMW_HYPER)])
def test_steady_state_step_has_no_per_parameter_host_work(cls, hyper, counters):
    params, masks = masked_params()
    opt = cls(params, backend="triton", mask_source=lambda p: masks.get(id(p)), **hyper)
    gen = torch.Generator().manual_seed(1)
    with _runtime.stubbed_launches() as launches:
        for _ in range(3):  # plan built (SGD: rebuilt once after its first, buffer-initialising step)
            set_grads(params, gen, new_tensors=False)
            opt.step()
        _reset(counters)
        launches.clear()
        for _ in range(4):
            opt.step()
    assert {k: counters[k].calls for k in SYNC_LIKE} == dict.fromkeys(SYNC_LIKE, 0)
    assert {k: counters[k].calls for k in CHECKS} == dict.fromkeys(CHECKS, 0)
    assert counters["build_work_list"].calls == 0 and counters["set_role"].calls == 0
    assert len(launches) == 4 * 2  # masked weights and dense biases: two launch groups, not six launches


@pytest.mark.parametrize("cls,hyper", [(MaskedSGD, STEP_SGD_HYPER), (MaskedAdamW, STEP_ADAMW_HYPER)])
def test_moved_gradients_patch_one_table_row_and_step_like_torch(cls, hyper, counters):
    params, masks = masked_params()
    ref_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    ref_masks = {id(r): masks[id(p)] for p, r in zip(params, ref_params) if id(p) in masks}
    opt = cls(params, backend="triton", mask_source=lambda p: masks.get(id(p)), **hyper)
    ref = cls(ref_params, backend="torch", mask_source=lambda p: ref_masks.get(id(p)), **hyper)
    gen, ref_gen = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    for step in range(5):
        if step == 3:
            _reset(counters)
        set_grads(params, gen, new_tensors=True)  # every gradient at a new address, as after set_to_none
        set_grads(ref_params, ref_gen, new_tensors=True)
        opt.step()
        ref.step()
    assert counters["build_work_list"].calls == 0, "moved gradients must not rebuild the tables"
    assert counters["set_role"].calls == 2 * 2  # two steps x two launch groups, gradient row only
    for a, b in zip(params, ref_params):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    for p in params:
        if id(p) in masks:
            assert torch.equal(p[~masks[id(p)]], torch.zeros_like(p[~masks[id(p)]]))


def test_new_parameter_storage_or_mask_tensor_rebuilds_and_in_place_mask_change_does_not(counters):
    params, masks = masked_params()
    opt = MaskedSGD(params, backend="triton", mask_source=lambda p: masks.get(id(p)), **STEP_SGD_HYPER)
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        set_grads(params, gen, new_tensors=False)
        opt.step()
    _reset(counters)
    with torch.no_grad():
        masks[id(params[0])][0, :] = False  # the registry updates masks in place: same tensor, new contents
    opt.step()
    assert counters["build_work_list"].calls == 0
    assert torch.equal(params[0][0], torch.zeros(5)), "the new mask applies on the next step"

    params[2].data = params[2].data.clone()  # e.g. a model moved after the optimizer was built
    opt.step()
    assert counters["build_work_list"].calls > 0, "a parameter at a new address needs new tables"
    builds = counters["build_work_list"].calls
    opt.step()
    assert counters["build_work_list"].calls == builds
    masks[id(params[0])] = masks[id(params[0])].clone()  # a new mask tensor
    opt.step()
    assert counters["build_work_list"].calls > builds


def test_adamw_step_counts_stay_in_torch_format_and_survive_a_state_dict_roundtrip():
    params, masks = masked_params()
    opt = MaskedAdamW(params, backend="triton", mask_source=lambda p: masks.get(id(p)), **STEP_ADAMW_HYPER)
    twin_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    twin_masks = {id(t): masks[id(p)] for p, t in zip(params, twin_params) if id(p) in masks}
    twin = MaskedAdamW(twin_params, backend="triton", mask_source=lambda p: twin_masks.get(id(p)), **STEP_ADAMW_HYPER)
    gen, twin_gen = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    for _ in range(2):
        set_grads(params, gen, new_tensors=False)
        set_grads(twin_params, twin_gen, new_tensors=False)
        opt.step()
        twin.step()
    state = opt.state[params[0]]
    assert state["step"].dim() == 0 and state["step"].dtype == torch.float32 and float(state["step"]) == 2.0
    # reload the twin from a deep copy (as from disk): its plan must adopt the loaded counters
    twin.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert not twin._plans
    for _ in range(2):
        set_grads(params, gen, new_tensors=False)
        set_grads(twin_params, twin_gen, new_tensors=False)
        opt.step()
        twin.step()
    for a, b in zip(params, twin_params):
        assert torch.equal(a, b)
    assert [float(opt.state[p]["step"]) for p in params] == [4.0] * len(params)
    assert [float(twin.state[p]["step"]) for p in twin_params] == [4.0] * len(params)
