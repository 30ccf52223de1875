"""CIFAR ResNet-20/32/56 (He et al. 2016) with option-A shortcuts.

Matches the layout of Y. Idelbayev's pretrained weights (``../shared/weights/cifar10-resnet*.th``):
``conv1``, ``bn1``, ``layer{1,2,3}.{i}.conv{1,2}``/``bn{1,2}``, ``linear``. The option-A shortcut
subsamples spatially and zero-pads channels; it has no parameters, which is why those checkpoints
load without any ``shortcut`` keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgeflow.models.base import Backbone, conv3x3


class PadShortcut(nn.Module):
    """Option A: x[:, :, ::2, ::2] with zero channels added on both sides."""

    def __init__(self, planes: int) -> None:
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class CifarBasicBlock(nn.Module):
    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = (PadShortcut(planes) if stride != 1 or cin != planes
                                    else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(Backbone):
    def __init__(self, depth: int, *, num_classes: int = 10, in_channels: int = 3,
                 width: int = 16) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.in_channels, self.input_size = in_channels, 32
        self.conv1 = conv3x3(in_channels, width)
        self.bn1 = nn.BatchNorm2d(width)
        widths = [width, 2 * width, 4 * width]
        cin = width
        for i, planes in enumerate(widths):
            blocks = []
            for j in range(n):
                blocks.append(CifarBasicBlock(cin, planes, 2 if (i > 0 and j == 0) else 1))
                cin = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.feature_dim = cin
        self.linear = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    # The pretrained checkpoints call the head ``linear``; ``classifier`` is the Backbone name.
    @property
    def classifier(self) -> nn.Linear:  # type: ignore[override]
        return self.linear

    def reset_classifier(self, num_classes: int) -> None:
        self.linear = nn.Linear(self.feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
