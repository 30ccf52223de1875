"""User models for the bring-your-own-model tests, importable as ``tests.models.byo_models:NAME``.

``ResNet`` is torchvision's ResNet-18 definition written out (torchvision does not work here):
the same module names (``conv1``, ``bn1``, ``layer1..4``, ``downsample``, ``fc``) and forward, with
a width multiplier and an optional small-input stem so tests run in seconds.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision.models.resnet.ResNet with BasicBlock, [2, 2, 2, 2] for ResNet-18."""

    def __init__(self, layers: tuple[int, ...] = (2, 2, 2, 2), num_classes: int = 1000,
                 width: int = 64, small_input: bool = False) -> None:
        super().__init__()
        self.inplanes = width
        if small_input:
            self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        else:
            self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if small_input else nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 8, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False),
                                       nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def build_resnet18() -> nn.Module:
    """A width-8 ResNet-18 (8-16-32-64 channels) with the small-input stem, 10 classes."""
    return ResNet(num_classes=10, width=8, small_input=True)


class OddHead(nn.Module):
    """A head called ``fc_out`` inside a Sequential after a hidden Linear: two Linear layers."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                                  nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1, bias=False),
                                  nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten())
        self.head = nn.Sequential(OrderedDict(embed=nn.Linear(16, 12), act=nn.ReLU(),
                                              fc_out=nn.Linear(12, 7)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stem(x))


def build_odd_head() -> nn.Module:
    return OddHead()


def build_no_batchnorm() -> nn.Module:
    """Convs with biases but no BatchNorm after the last one."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 5))


def build_not_a_module() -> dict:
    return {"conv": "not a model"}


def build_needs_args(num_classes: int) -> nn.Module:
    return ResNet(num_classes=num_classes, width=8, small_input=True)


class Untraceable(nn.Module):
    """Branches on a tensor's value in forward: runs eagerly, but the ONNX export cannot follow it
    (torch.jit.trace records one branch and the exported graph is only right for one input)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn(self.conv(x)).relu().mean((2, 3))
        rows = [r * 2 if float(r.sum()) > 0 else r for r in h]  # per-image Python control flow
        return self.fc(torch.stack(rows))


def build_untraceable() -> nn.Module:
    return Untraceable()


class Misordered(nn.Module):
    """Defines both convs, then both BatchNorms: ``bn_a`` sits right after ``conv_b`` in
    registration order but normalises ``conv_a``'s output (the export would fold it wrongly)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.conv_b = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(8)
        self.bn_b = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn_b(self.conv_b(self.bn_a(self.conv_a(x)).relu())).relu()
        return self.fc(h.mean((2, 3)))


def build_misordered() -> nn.Module:
    return Misordered()
