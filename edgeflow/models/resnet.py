"""ResNet-12 (the few-shot workhorse) and ResNet-18 (ImageNet layout, optional small-input stem)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgeflow.models.base import Backbone, conv3x3


class BasicBlock(nn.Module):
    """ResNet-18 basic block with a 1x1 projection shortcut when the shape changes."""

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.downsample(x))


class ResNet18(Backbone):
    def __init__(self, *, num_classes: int = 1000, in_channels: int = 3, small_input: bool = False,
                 width: int = 64) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.input_size = 32 if small_input else 224
        if small_input:  # CIFAR-style stem: keep resolution for 32-64 px images
            self.conv1 = conv3x3(in_channels, width)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(width)
        cin = width
        for i, mult in enumerate((1, 2, 4, 8)):
            planes = width * mult
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(cin, planes, stride),
                                                         BasicBlock(planes, planes)))
            cin = planes
        self.feature_dim = cin
        self.classifier = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


class Res12Block(nn.Module):
    """Three 3x3 convs, a 1x1 projection shortcut, then 2x2 max-pool (Lee et al. / MetaOptNet)."""

    def __init__(self, cin: int, planes: int) -> None:
        super().__init__()
        self.conv1 = conv3x3(cin, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv3x3(planes, planes)
        self.bn3 = nn.BatchNorm2d(planes)
        self.downsample = nn.Sequential(nn.Conv2d(cin, planes, 1, bias=False),
                                        nn.BatchNorm2d(planes))
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.leaky_relu(self.bn1(self.conv1(x)), 0.1)
        out = F.leaky_relu(self.bn2(self.conv2(out)), 0.1)
        out = self.bn3(self.conv3(out))
        return self.pool(F.leaky_relu(out + self.downsample(x), 0.1))


class ResNet12(Backbone):
    def __init__(self, *, num_classes: int = 64, in_channels: int = 3,
                 widths: tuple[int, ...] = (64, 160, 320, 640)) -> None:
        super().__init__()
        self.in_channels, self.input_size = in_channels, 84
        cin = in_channels
        blocks = []
        for planes in widths:
            blocks.append(Res12Block(cin, planes))
            cin = planes
        self.layers = nn.Sequential(*blocks)
        self.feature_dim = cin
        self.classifier = nn.Linear(cin, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(self.layers(x), 1), 1)
