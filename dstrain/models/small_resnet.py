"""CIFAR-style ResNets (He et al. 2016, section 4.2) for small images.

Three stages of BasicBlocks at widths w, 2w, 4w; ``depth = 6n + 2``.  Small
enough to train on CPU in minutes, yet built from the same Conv/BN/Linear
pieces as ResNet50, so masks, recipes and kernels see the same structure.
"""
from __future__ import annotations

import torch
from torch import nn


def _norm(kind: str, channels: int) -> nn.Module:
    """BatchNorm normally; "none" makes results independent of how a batch is split across ranks."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm={kind!r}: use 'batch' or 'none'")


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, norm: str = "batch") -> None:
        super().__init__()
        bias = norm == "none"
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=bias)
        self.bn1 = _norm(norm, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=bias)
        self.bn2 = _norm(norm, out_ch)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=bias), _norm(norm, out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    def __init__(self, depth: int = 8, width: int = 32, num_classes: int = 10, in_channels: int = 3,
                 norm: str = "batch", stem_stride: int = 1) -> None:
        """``stem_stride=2`` halves the resolution in the first conv: 4x fewer FLOPs in every
        later layer, which is what makes a 60,000-image epoch affordable on a 2-core CPU."""
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"depth={depth}: must be 6n+2 (8, 14, 20, 32, 44, 56, 110)")
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride={stem_stride}: use 1 or 2")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, stem_stride, 1, bias=norm == "none")
        self.bn1 = _norm(norm, width)
        layers, in_ch = [], width
        for stage, mult in enumerate((1, 2, 4)):
            for i in range(n):
                stride = 2 if (stage > 0 and i == 0) else 1
                layers.append(BasicBlock(in_ch, width * mult, stride, norm))
                in_ch = width * mult
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        return self.fc(torch.flatten(self.pool(x), 1))
