"""What every EdgeFlow backbone provides."""

from __future__ import annotations

import torch
from torch import nn


class Backbone(nn.Module):
    """A classifier split into ``features(x) -> (B, feature_dim)`` and a linear ``classifier``.

    ``features`` is the embedding the few-shot prototype classifier uses. ``adaptable_biases()``
    lists the per-channel shift parameters (BatchNorm biases, or conv biases where a layer has no
    BatchNorm), input side first: the candidates for HyperFlow's theta.
    """

    feature_dim: int
    in_channels: int
    input_size: int  # the image side the model was designed for (it accepts others)
    classifier: nn.Linear

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def adaptable_biases(self) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) of every per-channel shift, in forward order."""
        out: list[tuple[str, nn.Parameter]] = []
        convs_with_bn: set[str] = set()
        modules = dict(self.named_modules())
        names = list(modules)
        for i, name in enumerate(names):
            mod = modules[name]
            if isinstance(mod, nn.BatchNorm2d) and mod.bias is not None:
                out.append((f"{name}.bias", mod.bias))
                if i > 0:
                    convs_with_bn.add(names[i - 1])
        for name, mod in modules.items():
            if isinstance(mod, nn.Conv2d) and mod.bias is not None and name not in convs_with_bn:
                out.append((f"{name}.bias", mod.bias))
        order = {n: i for i, (n, _) in enumerate(self.named_parameters())}
        return sorted(out, key=lambda item: order[item[0]])

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head (e.g. to fine-tune on a dataset with another number of classes)."""
        self.classifier = nn.Linear(self.feature_dim, num_classes)


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
