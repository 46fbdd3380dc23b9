"""MaskedSGD / MaskedAdamW: torch semantics when dense, exact zeros when masked."""
import copy

import pytest
import torch
from torch import nn

from dstrain import MaskedAdamW, MaskedSGD


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5))


def _train(model, opt, steps=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(8, 2, 6, 6, generator=g)
        y = torch.randint(0, 5, (8,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


SGD_VARIANTS = [dict(momentum=0.0), dict(momentum=0.9), dict(momentum=0.9, nesterov=True, weight_decay=1e-2),
                dict(momentum=0.8, dampening=0.3, weight_decay=1e-3), dict(momentum=0.9, maximize=True)]


@pytest.mark.parametrize("kw", SGD_VARIANTS)
@pytest.mark.parametrize("all_ones", [False, True])
def test_masked_sgd_equals_torch_sgd_without_pruning(kw, all_ones):
    ref, ours = _model(), _model()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05, foreach=False, **kw)
    masks = {id(p): torch.ones_like(p, dtype=torch.bool) for p in ours.parameters()}
    ours_opt = MaskedSGD(ours.parameters(), lr=0.05, backend="torch",
                         mask_source=(lambda p: masks[id(p)]) if all_ones else None, **kw)
    _train(ref, ref_opt)
    _train(ours, ours_opt)
    for a, b in zip(ref.parameters(), ours.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kw", [dict(), dict(weight_decay=0.1), dict(betas=(0.8, 0.9), eps=1e-6), dict(maximize=True)])
@pytest.mark.parametrize("all_ones", [False, True])
def test_masked_adamw_equals_torch_adamw_without_pruning(kw, all_ones):
    ref, ours = _model(), _model()
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, foreach=False, **kw)
    masks = {id(p): torch.ones_like(p, dtype=torch.bool) for p in ours.parameters()}
    ours_opt = MaskedAdamW(ours.parameters(), lr=1e-2, backend="torch",
                           mask_source=(lambda p: masks[id(p)]) if all_ones else None, **kw)
    _train(ref, ref_opt)
    _train(ours, ours_opt)
    for a, b in zip(ref.parameters(), ours.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("make_opt", [
    lambda ps, src: MaskedSGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3, backend="torch", mask_source=src),
    lambda ps, src: MaskedAdamW(ps, lr=1e-2, weight_decay=0.1, backend="torch", mask_source=src),
])
def test_pruned_weights_and_state_stay_exactly_zero(make_opt):
    model = _model()
    # Momentum is built up densely first, so stale state exists when the mask arrives.
    masks = {}
    opt = make_opt(list(model.parameters()), lambda p: masks.get(id(p)))
    _train(model, opt, steps=3)
    g = torch.Generator().manual_seed(5)
    for p in model.parameters():
        if p.dim() > 1:
            masks[id(p)] = torch.rand(p.shape, generator=g) > 0.7
    for step in range(4):
        _train(model, opt, steps=1, seed=10 + step)
        for p in model.parameters():
            if id(p) in masks:
                pruned = ~masks[id(p)]
                assert (p[pruned] == 0).all(), f"revived weight after step {step}"
                for buf in opt.state[p].values():
                    if torch.is_tensor(buf) and buf.shape == p.shape:
                        assert (buf[pruned] == 0).all(), "optimizer state can revive a pruned weight"
                assert (p[~pruned] != 0).any()


def test_dense_phase_switch_lets_weights_regrow():
    model = _model()
    g = torch.Generator().manual_seed(0)
    masks = {id(p): torch.rand(p.shape, generator=g) > 0.5 for p in model.parameters() if p.dim() > 1}
    opt = MaskedSGD(model.parameters(), lr=0.1, momentum=0.9, backend="torch", mask_source=lambda p: masks.get(id(p)))
    _train(model, opt, steps=1)
    assert all((p[~masks[id(p)]] == 0).all() for p in model.parameters() if p.dim() > 1)
    opt.masking_enabled = False
    _train(model, opt, steps=1)
    assert all((p[~masks[id(p)]] != 0).all() for p in model.parameters() if p.dim() > 1)


def test_bad_hyperparameters_are_refused():
    with pytest.raises(ValueError, match="nesterov"):
        MaskedSGD(_model().parameters(), lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="backend"):
        MaskedSGD(_model().parameters(), lr=0.1, backend="cuda")


def test_state_dict_roundtrip_with_torch_format():
    model = _model()
    opt = MaskedAdamW(model.parameters(), lr=1e-2, backend="torch")
    _train(model, opt, steps=2)
    clone = copy.deepcopy(model)
    opt2 = MaskedAdamW(clone.parameters(), lr=1e-2, backend="torch")
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))  # as if read from disk: no shared tensors
    _train(model, opt, steps=2, seed=3)
    _train(clone, opt2, steps=2, seed=3)
    for a, b in zip(model.parameters(), clone.parameters()):
        assert torch.equal(a, b)
