"""Conv-4 (the classic few-shot baseline) and VGG-11/19 with BatchNorm (CIFAR-style head)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgeflow.models.base import Backbone

VGG_CONFIGS = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M"),
}


class Conv4(Backbone):
    """Four [conv3x3 -> BN -> ReLU -> max-pool 2] blocks, then global average pooling."""

    def __init__(self, *, num_classes: int = 64, in_channels: int = 3, width: int = 64) -> None:
        super().__init__()
        self.in_channels, self.input_size = in_channels, 84
        layers: list[nn.Module] = []
        cin = in_channels
        for _ in range(4):
            layers += [nn.Conv2d(cin, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2, ceil_mode=True)]
            cin = width
        self.encoder = nn.Sequential(*layers)
        self.feature_dim = width
        self.classifier = nn.Linear(width, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(self.encoder(x), 1), 1)


class VGG(Backbone):
    """VGG with BatchNorm; the last pooling is global so any input size >= 32 works."""

    def __init__(self, depth: int, *, num_classes: int = 10, in_channels: int = 3,
                 width_mult: float = 1.0) -> None:
        super().__init__()
        if depth not in VGG_CONFIGS:
            raise ValueError(f"VGG depth must be one of {sorted(VGG_CONFIGS)}, got {depth}")
        self.in_channels, self.input_size = in_channels, 32
        layers: list[nn.Module] = []
        cin = in_channels
        for v in VGG_CONFIGS[depth]:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            cout = max(8, int(v * width_mult))
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                       nn.ReLU(inplace=True)]
            cin = cout
        self.body = nn.Sequential(*layers[:-1])  # global pooling replaces the last max-pool
        self.feature_dim = cin
        self.classifier = nn.Linear(cin, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(self.body(x), 1), 1)
