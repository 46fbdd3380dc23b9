"""channels_last changes memory layout only: the same masks, the same optimizer steps, the same trained weights.

Breaks if a mask of a channels-last weight is indexed through ``view(-1)`` (raises) or in
memory order instead of logical order (different ties), if the weights are handed channels-last to
``deepspeed.initialize`` (DeepSpeed 0.19.8 raises), or if the conversion afterwards
detaches the weights from the optimizer, the masks or checkpoints.
"""
import json
from pathlib import Path

import pytest
import torch
from helpers import run, tiny_recipe, weights_and_masks

from dstrain.optim import MaskedAdamW, MaskedSGD
from dstrain.sparsity.magnitude import (
    global_magnitude_masks,
    layerwise_magnitude_masks,
    torch_kth_smallest_abs,
)

REPO = Path(__file__).resolve().parent.parent
CL = torch.channels_last


def _conv_weights_with_ties():
    g = torch.Generator().manual_seed(0)
    ws = [torch.randn(8, 4, 3, 3, generator=g), torch.randn(6, 8, 1, 1, generator=g) * 0.5]
    ws[0][:, :, 1, 1] = 0.25  # ties at the threshold in both tensors, spread over channels
    ws[1][:, :3] = 0.25
    return ws


@pytest.mark.parametrize("criterion", [global_magnitude_masks, layerwise_magnitude_masks])
@pytest.mark.parametrize("selector", [None, torch_kth_smallest_abs])
@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9])
def test_masks_of_channels_last_weights_equal_the_contiguous_ones(criterion, selector, sparsity):
    ws = _conv_weights_with_ties()
    expected = criterion(ws, sparsity, selector)
    got = criterion([w.contiguous(memory_format=CL) for w in ws], sparsity, selector)
    for e, m in zip(expected, got):
        assert torch.equal(e, m)
        assert m.is_contiguous(memory_format=CL)  # laid out like its weight: the kernels' flat order
    assert sum(int((~m).sum()) for m in got) == sum(int((~m).sum()) for m in expected)


@pytest.mark.parametrize("opt", ["sgd", "adamw"])
@pytest.mark.parametrize("backend", ["torch"])
def test_optimizer_steps_channels_last_weights_like_contiguous_ones(opt, backend):
    """Same backend, two layouts: bit-identical weights and state."""
    w = _conv_weights_with_ties()[0]
    mask = global_magnitude_masks([w], 0.5)[0]
    out = {}
    for fmt in (torch.contiguous_format, CL):
        p = torch.nn.Parameter(w.clone().contiguous(memory_format=fmt))
        m = mask.clone().contiguous(memory_format=fmt)
        kw = dict(momentum=0.9, nesterov=True) if opt == "sgd" else {}
        cls = MaskedSGD if opt == "sgd" else MaskedAdamW
        o = cls([p], lr=0.1, weight_decay=1e-3, backend=backend, mask_source=lambda _, m=m: m, **kw)
        for i in range(3):
            p.grad = torch.randn(w.shape, generator=torch.Generator().manual_seed(i)).contiguous(memory_format=fmt)
            o.step()
        assert p.is_contiguous(memory_format=fmt)
        state = {k: v.clone() for k, v in o.state[p].items() if torch.is_tensor(v) and v.dim()}
        assert all(v.is_contiguous(memory_format=fmt) for v in state.values())
        out[fmt] = (p.detach().clone(), state)
    (p0, s0), (p1, s1) = out.values()
    assert torch.equal(p0, p1) and int((p1[~mask] != 0).sum()) == 0
    assert s0.keys() == s1.keys() and all(torch.equal(s0[k], s1[k]) for k in s0)


def _config(name: str, **changes) -> dict:
    cfg = json.loads((REPO / "launch" / name).read_text())
    cfg.update(changes)
    return cfg


# The shipped CPU configs, and ZeRO-2 as launch/configs/1gpu_zero2_bf16.json sets it up, in fp32
# (bf16 would round differently when only the input layout changes).
CONFIGS = {
    "cpu_gloo": _config("configs/cpu_gloo.json"),
    "ds_config": _config("ds_config.json"),
    "zero2": _config("configs/1gpu_zero2_bf16.json", bf16={"enabled": False}),
}


# No BatchNorm: a channels-last convolution sums in another order (differences ~1e-7), and
# batch statistics amplify that into ~1% weight differences after 22 steps at lr 0.1 (measured);
# without BN the whole 33-step run stays within 3e-7 of the contiguous one.
NO_BN = {"task.arch_options": {"depth": 8, "width": 8, "norm": "none"}, "optimizer.lr": 0.05}


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_digits_with_channels_last_trains_the_same_weights(config, tmp_path):
    ds_config = CONFIGS[config]
    runs = {}
    for cl in (False, True):
        trainer, result = run(tiny_recipe(**{"task.channels_last": cl}, **NO_BN), tmp_path / str(cl),
                              ds_config=ds_config)
        assert result["revived"] == 0
        assert sum(int((~m).sum()) for m in trainer.registry.masks.values()) == round(0.8 * trainer.registry.numel)
        assert result["sparsity"] == trainer.registry.mask_sparsity()  # every pruned weight is an exact zero
        runs[cl] = weights_and_masks(trainer)
        if cl:
            convs = [p for p in trainer.engine.module.parameters() if p.dim() == 4]
            kept = config != "zero2"  # ZeRO-2's weights are views of its flat buffer (README)
            assert trainer.weights_channels_last == kept
            assert all(p.is_contiguous(memory_format=CL) if kept else p.is_contiguous() for p in convs)
            assert kept or not all(p.is_contiguous(memory_format=CL) for p in convs)
            if kept:  # the masks follow their weights' layout
                assert all(m.is_contiguous(memory_format=CL) for m in trainer.registry.masks.values() if m.dim() == 4)
    for key, value in runs[False].items():
        if key.startswith("m/"):
            assert torch.equal(runs[True][key], value), key
        else:
            torch.testing.assert_close(runs[True][key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_channels_last_run_stops_and_resumes_to_the_same_weights(tmp_path):
    recipe = tiny_recipe(**{"task.channels_last": True, "optimizer.backend": "torch"})
    full, _ = run(recipe, tmp_path / "full")
    run(recipe, tmp_path / "split", max_steps=16, save_every=5)
    resumed, result = run(recipe, tmp_path / "split", resume="auto")
    assert resumed.weights_channels_last and result["revived"] == 0
    expected, got = weights_and_masks(full), weights_and_masks(resumed)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


def test_frozen_teacher_is_in_eval_mode_without_gradients_on_the_students_dtype():
    from torch import nn

    from dstrain.run.placement import frozen_teacher

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.5), nn.Linear(16, 3))
    teacher = frozen_teacher(net, torch.device("cpu"), torch.bfloat16)
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    assert all(p.dtype == torch.bfloat16 for p in teacher.parameters())
    x = torch.randn(8, 4, dtype=torch.bfloat16)
    assert torch.equal(teacher(x), teacher(x))  # dropout off
