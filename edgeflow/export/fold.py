"""An export-friendly copy of a backbone: BatchNorm folded into convs, theta as a forward input.

``ThetaFeatures(model, spec)`` deep-copies ``model`` (left untouched) and rewrites it module by
module, so it works for any backbone whose ``features`` is plain PyTorch (every zoo model, and the
finalized output of the pruning stage, where masks are already folded into dense weights):

- a Conv2d followed (in registration order) by its BatchNorm2d becomes one conv with weights
  ``W * gamma / std`` and bias ``(b - mean) * gamma / std + beta``; the BN becomes Identity. When the
  BN bias ``beta`` is part of theta, the conv keeps the constant bias ``(b - mean) * gamma / std``
  and ``theta[slice]`` is added per channel after it (a graph input, so it changes at run time).
- a BatchNorm2d with no conv before it becomes a per-channel affine (theta-aware the same way).
- a conv bias in theta (a conv without BN) becomes ``theta[slice]``.

Forward is ``(images, theta) -> features``, exactly ``features_with_theta(model, images, theta,
spec)`` in eval mode; the export parity check holds it to that. With ``means=True`` it returns
``(features, theta_means)``: the per-image spatial means (N, P) of every theta layer's output (a
BatchNorm's output; for a conv-bias entry, theta itself), which the device's re-centring reads
from the same support pass (:mod:`edgeflow.adapt.recenter`, whose ``support_pass`` it matches).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from edgeflow.adapt import ThetaSpec
from edgeflow.errors import ConfigError


class _ThetaSource:
    """Holds the theta tensor of the current forward call (shared by every rewritten module), and
    collects the theta layers' spatial output means when ``means`` is a dict."""

    theta: torch.Tensor | None = None
    means: dict[int, torch.Tensor] | None = None

    def record(self, slot: tuple[int, int], y: torch.Tensor) -> None:
        if self.means is not None:
            self.means[slot[0]] = y.mean(dim=(2, 3))

    def slice(self, offset: int, size: int) -> torch.Tensor:
        assert self.theta is not None, "ThetaFeatures.forward sets theta before the backbone runs"
        return self.theta[offset:offset + size]


class FoldedConv(nn.Module):
    """conv(x, W') + (theta slice or 0) + constant bias; W' and the constant are buffers."""

    def __init__(self, conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor,
                 source: _ThetaSource, theta_slot: tuple[int, int] | None, *,
                 from_bn: bool = True) -> None:
        super().__init__()
        self.from_bn = from_bn  # a conv-bias theta entry has no training mean: no re-centring
        self.stride, self.padding = conv.stride, conv.padding
        self.dilation, self.groups = conv.dilation, conv.groups
        if conv.padding_mode != "zeros":
            raise ConfigError(f"cannot export conv with padding_mode={conv.padding_mode!r}")
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("bias_const", bias.detach().clone())
        self.source, self.theta_slot = source, theta_slot

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(x, self.weight, self.bias_const, self.stride, self.padding, self.dilation,
                     self.groups)
        if self.theta_slot is not None:
            # A separate broadcast Add, not a computed conv bias: ONNX Runtime's CPU conv kernels
            # (NCHWc) need constant weights *and* bias; a runtime bias made the whole backbone
            # 1.3-1.9x slower (measured on ResNet-20, 2 cores). TensorRT takes either form.
            y = y + self.source.slice(*self.theta_slot).view(1, -1, 1, 1)
            if self.from_bn:
                self.source.record(self.theta_slot, y)
        return y


class ChannelAffine(nn.Module):
    """x * scale + (theta slice or 0) + shift, per channel: a BatchNorm with nothing to fold into."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor, source: _ThetaSource,
                 theta_slot: tuple[int, int] | None) -> None:
        super().__init__()
        self.register_buffer("scale", scale.detach().clone())
        self.register_buffer("shift", shift.detach().clone())
        self.source, self.theta_slot = source, theta_slot

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shift = self.shift
        if self.theta_slot is not None:
            shift = self.source.slice(*self.theta_slot) + shift
        y = x * self.scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
        if self.theta_slot is not None:
            self.source.record(self.theta_slot, y)
        return y


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(gamma / std, -mean * gamma / std, beta) of an eval-mode BatchNorm."""
    if bn.running_mean is None or bn.running_var is None:
        raise ConfigError(f"BatchNorm without running statistics cannot be folded: {bn}")
    gamma = bn.weight.detach() if bn.weight is not None else torch.ones_like(bn.running_var)
    beta = bn.bias.detach() if bn.bias is not None else torch.zeros_like(bn.running_var)
    scale = gamma / torch.sqrt(bn.running_var + bn.eps)
    return scale, -bn.running_mean * scale, beta


def _deepcopy(model: nn.Module) -> nn.Module:
    """deepcopy that also takes masked/parametrised modules: a computed weight (torch.nn.utils.prune
    sets ``weight = weight_orig * mask`` as a plain attribute) is not a graph leaf and refuses
    deepcopy, so it is copied as a detached tensor."""
    memo: dict[int, object] = {}
    for mod in model.modules():
        for value in vars(mod).values():
            if isinstance(value, torch.Tensor) and not value.is_leaf:
                memo[id(value)] = value.detach().clone()
    return copy.deepcopy(model, memo)


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, new)


class ThetaFeatures(nn.Module):
    """``forward(images, theta) -> features`` of a BN-folded copy of ``model`` (with ``means``:
    ``-> (features, theta_means)``)."""

    def __init__(self, model: nn.Module, spec: ThetaSpec, *, means: bool = False) -> None:
        super().__init__()
        self.with_means = means
        net = _deepcopy(model).eval().float()
        self.source = _ThetaSource()
        slots = {d["name"]: (d["offset"], d["size"]) for d in spec.layout()}
        self.slots = list(slots.values())  # theta order
        self.theta_size = spec.size
        modules = dict(net.named_modules())
        names = list(modules)
        used: set[str] = set()
        folded_convs: set[str] = set()
        for i, name in enumerate(names):
            bn = modules[name]
            if not isinstance(bn, nn.BatchNorm2d):
                continue
            scale, shift, beta = _bn_affine(bn)
            slot = slots.get(f"{name}.bias")
            if slot is not None:
                used.add(f"{name}.bias")
            else:
                shift = shift + beta
            prev = modules[names[i - 1]] if i > 0 else None
            if isinstance(prev, nn.Conv2d) and prev.out_channels == bn.num_features:
                conv_bias = prev.bias.detach() if prev.bias is not None else torch.zeros_like(scale)
                weight = prev.weight.detach() * scale.view(-1, 1, 1, 1)
                _set_module(net, names[i - 1],
                            FoldedConv(prev, weight, conv_bias * scale + shift, self.source, slot))
                _set_module(net, name, nn.Identity())
                folded_convs.add(names[i - 1])
            else:
                _set_module(net, name, ChannelAffine(scale, shift, self.source, slot))
        for name, mod in modules.items():
            key = f"{name}.bias"
            if isinstance(mod, nn.Conv2d) and name not in folded_convs and key in slots:
                _set_module(net, name, FoldedConv(mod, mod.weight.detach(),
                                                  torch.zeros_like(mod.bias.detach()), self.source,
                                                  slots[key], from_bn=False))
                used.add(key)
        unused = [n for n in spec.names if n not in used]
        if unused:
            raise ConfigError(f"theta names {unused} are not BatchNorm2d or Conv2d biases of this "
                              "model; export supports those only")
        leftover = [n for n, m in net.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if leftover:
            raise ConfigError(f"cannot fold BatchNorm layers {leftover[:4]} (not BatchNorm2d)")
        self.net = net

    def forward(self, images: torch.Tensor,
                theta: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        self.source.theta = theta
        self.source.means = {} if self.with_means else None
        try:
            feats = self.net.features(images)
            if not self.with_means:
                return feats
            got = self.source.means
            n = feats.shape[0]
            parts = [got[o] if o in got else theta[o:o + size].view(1, -1).expand(n, -1)
                     for o, size in self.slots]
            return feats, torch.cat(parts, dim=1)
        finally:
            self.source.theta = self.source.means = None
