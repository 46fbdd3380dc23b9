"""Model factories by name (torchvision ResNets and small CIFAR-style ResNets)."""
from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import ConfigError
from .small_resnet import SmallResNet

ARCHS = ("small_resnet", "resnet18", "resnet34", "resnet50")


def build_vision_model(arch: str, num_classes: int, in_channels: int = 3, **kwargs: Any) -> nn.Module:
    """Randomly initialised vision model; torchvision models are built offline (no weights)."""
    if arch == "small_resnet":
        return SmallResNet(num_classes=num_classes, in_channels=in_channels, **kwargs)
    if arch in ("resnet18", "resnet34", "resnet50"):
        import torchvision

        if in_channels != 3:
            raise ConfigError("task.arch", f"{arch} expects 3-channel images, data has {in_channels}",
                              "use arch: small_resnet for single-channel data")
        return getattr(torchvision.models, arch)(weights=None, num_classes=num_classes, **kwargs)
    raise ConfigError("task.arch", f"unknown architecture {arch!r}", f"use one of {ARCHS}")


__all__ = ["SmallResNet", "build_vision_model", "ARCHS"]
