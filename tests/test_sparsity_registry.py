"""Prunable-parameter selection and the mask registry."""
import pytest
import torch
import torchvision
from torch import nn

from dstrain import ConfigError, MaskRegistry, PrunableSelection
from dstrain.models import SmallResNet
from dstrain.sparsity.magnitude import global_magnitude_masks


def test_default_selection_on_torchvision_resnet18_skips_first_conv_fc_bn_bias():
    model = torchvision.models.resnet18(weights=None)
    reg = MaskRegistry(model)
    names = reg.names()
    assert "conv1.weight" not in names and "fc.weight" not in names
    assert "layer1.0.conv1.weight" in names and "layer4.1.conv2.weight" in names
    assert "layer2.0.downsample.0.weight" in names
    assert not any("bn" in n or n.endswith("bias") for n in names)
    assert len(names) == 19


def test_masks_are_bool_on_the_parameter_device():
    reg = MaskRegistry(SmallResNet(num_classes=10, in_channels=1))
    for name, mask in reg.masks.items():
        assert mask.dtype == torch.bool and mask.device == reg.params[name].device
        assert mask.shape == reg.params[name].shape


def test_include_and_exclude_patterns_override_defaults():
    model = SmallResNet(num_classes=10)
    reg = MaskRegistry(model, PrunableSelection(include=[r"^fc\.weight$", r"conv1\.weight"], exclude=[r"^conv1"]))
    assert "fc.weight" in reg.names() and "conv1.weight" not in reg.names()
    assert "layers.0.conv1.weight" in reg.names()


def test_pattern_matching_nothing_names_the_field():
    model = SmallResNet(num_classes=10)
    with pytest.raises(ConfigError, match=r"pruning\.exclude\[1\]: pattern 'attention' matches no parameter"):
        MaskRegistry(model, PrunableSelection(exclude=["fc", "attention"]))
    with pytest.raises(ConfigError, match=r"pruning\.include\[0\]: '\(' is not a valid regex"):
        MaskRegistry(model, PrunableSelection(include=["("]))


def test_update_apply_and_roundtrip_state_dict():
    torch.manual_seed(0)
    model = SmallResNet(num_classes=10)
    reg = MaskRegistry(model)
    flips = reg.set_masks(global_magnitude_masks([reg.params[n] for n in reg.names()], 0.75))
    assert flips == pytest.approx(0.75, abs=1e-6)
    assert reg.weight_sparsity() == pytest.approx(0.75, abs=1.0 / reg.numel)
    assert reg.revived() == 0
    state = reg.state_dict()
    torch.manual_seed(1)
    other = MaskRegistry(SmallResNet(num_classes=10))
    other.load_state_dict(state)
    other.apply()
    assert all(torch.equal(other.masks[n], reg.masks[n]) for n in reg.names())
    assert other.weight_sparsity() >= 0.75 - 1e-9


def test_loading_masks_of_another_model_fails_clearly():
    reg = MaskRegistry(SmallResNet(num_classes=10))
    small = MaskRegistry(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 3), nn.Linear(2, 2)))
    with pytest.raises(ConfigError, match="checkpoint.masks"):
        reg.load_state_dict(small.state_dict())
