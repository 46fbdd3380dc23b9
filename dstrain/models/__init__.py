"""Model factories by name (torchvision ResNets and small CIFAR-style ResNets)."""
from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional, Type

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from torch import nn

from dstrain.errors import ConfigError
from dstrain.messages import clip, pydantic_fix, pydantic_problem, shown
from dstrain.models.small_resnet import SmallResNet

ARCHS = ("small_resnet", "resnet18", "resnet34", "resnet50")


class _ArchOptions(BaseModel):
    """``task.arch_options`` go straight into a model constructor: typed per architecture here."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class SmallResNetOptions(_ArchOptions):
    # 1202 is the deepest CIFAR ResNet published (He et al. 2016); deeper only exhausts memory
    depth: int = Field(default=8, ge=8, le=1202, description="6n+2")
    width: int = Field(default=32, gt=0, le=4096)
    norm: Literal["batch", "none"] = "batch"
    stem_stride: int = Field(default=1, ge=1, le=2, description="2 halves the resolution in the first conv")

    @field_validator("depth")
    @classmethod
    def _six_n_plus_two(cls, value: int) -> int:
        if (value - 2) % 6:
            raise ValueError(f"{value} is not 6n+2 (use 8, 14, 20, 32, 44, 56 or 110)")
        return value


class BasicResNetOptions(_ArchOptions):
    """torchvision resnet18/34 (BasicBlock: groups and width_per_group must stay at their defaults)."""

    zero_init_residual: bool = False


class BottleneckResNetOptions(BasicResNetOptions):
    # ResNeXt uses 32 or 64 groups and wide ResNets 128 per group; far larger models do not fit any GPU
    groups: int = Field(default=1, gt=0, le=64)
    width_per_group: int = Field(default=64, gt=0, le=256)
    replace_stride_with_dilation: Optional[List[bool]] = Field(default=None, min_length=3, max_length=3)


ARCH_OPTIONS: Dict[str, Type[_ArchOptions]] = {"small_resnet": SmallResNetOptions, "resnet18": BasicResNetOptions,
                                               "resnet34": BasicResNetOptions, "resnet50": BottleneckResNetOptions}


def check_arch_options(arch: str, options: Any, field: str = "task") -> None:
    """One ConfigError line for an unknown architecture or a bad/unknown ``arch_options`` key."""
    if arch not in ARCH_OPTIONS:
        raise ConfigError(f"{field}.arch", f"unknown architecture {arch!r}", f"use one of {', '.join(ARCHS)}")
    try:
        ARCH_OPTIONS[arch].model_validate(options)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(clip(str(p), 80) for p in first["loc"])
        allowed = ", ".join(ARCH_OPTIONS[arch].model_fields)
        if first["type"] == "extra_forbidden":
            raise ConfigError(f"{field}.arch_options.{loc}", f"is not an option of {arch}",
                              f"use only {allowed}") from None
        msg = pydantic_problem(first) or f"{shown(first.get('input'))}: {first['msg'].removeprefix('Value error, ')}"
        fix = pydantic_fix(first) or f"{arch} takes {allowed}"
        raise ConfigError(f"{field}.arch_options{'.' + loc if loc else ''}", msg, fix) from None


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


__all__ = ["SmallResNet", "build_vision_model", "check_arch_options", "ARCHS", "ARCH_OPTIONS"]
