"""Channel granularity: which channels can go, exact counts, the final trim and physical surgery.

This module is the block-inner plan (``channel_groups="inner"``); ``"depgraph"`` (any traceable
model, residual streams included) lives in :mod:`edgeflow.prune.depgraph` and reuses the trim here.
Models of the inner plan (others raise :class:`ConfigError`):

* CIFAR ResNet-20/32/56 (option-A shortcuts). The residual stream's channels are tied across a
  stage by the parameter-free zero-pad shortcuts, so only block-internal channels are pruned:
  ``conv1`` output / ``bn1`` / ``conv2`` input of every basic block. The stem, every ``conv2``
  output and the linear head keep their width.
* Plain chains (``conv4``, ``vgg11``, ``vgg19``): every conv output channel (with its BatchNorm)
  and the matching input channel of the next conv, or of the linear head after global pooling.

A pruned channel's conv filter and its BatchNorm weight and bias are all masked to zero, so its
activation is exactly 0 after BN (and ReLU / max-pool / average-pool keep it 0): removing it and the
consumer's matching input slice changes no output. ``shrink_channels`` does that removal.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from edgeflow.errors import ConfigError
from edgeflow.models.cifar_resnet import CifarResNet
from edgeflow.models.small import VGG, Conv4

SUPPORTED = ("resnet20", "resnet32", "resnet56", "conv4", "vgg11", "vgg19")


@dataclass(frozen=True)
class ChannelGroup:
    """One prunable channel set: the producing conv, its BatchNorm, the layers that consume it."""

    conv: str
    bn: str
    consumers: tuple[str, ...]


def inner_plan_covers(model: nn.Module) -> bool:
    """True for the models :func:`channel_plan` supports (CIFAR ResNets, conv4, VGG)."""
    return isinstance(model, (CifarResNet, Conv4, VGG))


def channel_plan(model: nn.Module) -> list[ChannelGroup]:
    """The prunable channel groups of ``model`` (see the module docstring)."""
    if isinstance(model, CifarResNet):
        plan = []
        for stage in ("layer1", "layer2", "layer3"):
            for i in range(len(getattr(model, stage))):
                p = f"{stage}.{i}"
                plan.append(ChannelGroup(f"{p}.conv1", f"{p}.bn1", (f"{p}.conv2",)))
        return plan
    if isinstance(model, (Conv4, VGG)):
        seq_name = "encoder" if isinstance(model, Conv4) else "body"
        seq = getattr(model, seq_name)
        convs = [i for i, mod in enumerate(seq) if isinstance(mod, nn.Conv2d)]
        plan = []
        for j, i in enumerate(convs):
            if not isinstance(seq[i + 1], nn.BatchNorm2d):
                raise ConfigError(f"{seq_name}.{i} has no BatchNorm after it; channel pruning "
                                  "needs conv -> BatchNorm pairs")
            consumer = f"{seq_name}.{convs[j + 1]}" if j + 1 < len(convs) else "classifier"
            plan.append(ChannelGroup(f"{seq_name}.{i}", f"{seq_name}.{i + 1}", (consumer,)))
        return plan
    raise ConfigError(f"the block-inner channel plan supports {', '.join(SUPPORTED)}; got "
                      f"{type(model).__name__}. Use --channel-groups depgraph (any traceable model), "
                      "or --granularity weight or n:m")


def _shape(layer: nn.Module) -> tuple[int, int, int]:
    """(out, in, kernel positions) of a conv/linear layer, from its latent weight."""
    from edgeflow.prune.scored import latent_weight

    w = latent_weight(layer)
    return int(w.shape[0]), int(w.shape[1]), int(w[0, 0].numel())


def channel_layer_counts(ms, keeps: dict[str, torch.Tensor]) -> dict[str, tuple[float, float]]:
    """(remaining, total) weights of every conv/linear layer when ``keeps`` channels survive."""
    from edgeflow.prune.depgraph import DepPlan

    if isinstance(ms.plan, DepPlan):
        from edgeflow.prune.depgraph_shrink import group_layer_counts

        return group_layer_counts(ms, keeps)
    kept_out = {g.conv: int(keeps[g.conv].sum()) for g in ms.plan if g.conv in keeps}
    kept_in = {c: kept_out[g.conv] for g in ms.plan if g.conv in kept_out for c in g.consumers}
    out = {}
    for name, layer in ms.layers.items():
        o, i, k = _shape(layer)
        out[name] = (float(kept_out.get(name, o) * kept_in.get(name, i) * k), float(o * i * k))
    return out


def _density(ms, keeps: dict[str, torch.Tensor], budget: str) -> float:
    counts = channel_layer_counts(ms, keeps)
    kept = total = 0.0
    for name, (k, t) in counts.items():
        mult = ms.positions.get(name, 1) if budget == "flops" else 1
        kept, total = kept + k * mult, total + t * mult
    return kept / max(1.0, total)


def trim_channels(ms, target: float, *, budget: str = "weights", min_channels: int = 1,
                  multiple: int = 1) -> None:
    """Remove (or restore) channels by score until the density is the closest one <= ``target``.

    Every layer keeps at least ``min_channels`` and a multiple of ``multiple`` channels (when it
    has that many), so the rebuilt model never has an empty layer.
    """
    keeps = {n: k.clone() for n, k in ms.keeps().items()}
    scores = {n: ms.masks[n].scores.detach() for n in keeps}

    def ranked(name: str, kept: bool) -> list[int]:
        sel = torch.nonzero(keeps[name] == kept).flatten()
        order = scores[name][sel].argsort(descending=not kept)  # kept: lowest first
        return sel[order].tolist()

    def floor(name: str) -> int:
        size = keeps[name].numel()
        return min(size, -(-max(min_channels, 1) // multiple) * multiple)

    for name in keeps:  # round every layer up to the constraints first
        size, have = keeps[name].numel(), int(keeps[name].sum())
        want = min(size, max(floor(name), -(-have // multiple) * multiple))
        for idx in ranked(name, False)[:want - have]:
            keeps[name][idx] = True
    while _density(ms, keeps, budget) > target:
        best = None
        for name in keeps:
            have = int(keeps[name].sum())
            if have - multiple < floor(name):
                continue
            chunk = ranked(name, True)[:multiple]
            s = float(scores[name][chunk].mean())
            if best is None or s < best[0]:
                best = (s, name, chunk)
        if best is None:
            break
        for idx in best[2]:
            keeps[best[1]][idx] = False
    while True:  # the last removal may have overshot: restore the best chunk that still fits
        options = []
        for name in keeps:
            chunk = ranked(name, False)[:multiple]
            if len(chunk) == multiple:
                options.append((float(scores[name][chunk].mean()), name, chunk))
        for _, name, chunk in sorted(options, reverse=True):
            keeps[name][chunk] = True
            if _density(ms, keeps, budget) <= target:
                break
            keeps[name][chunk] = False
        else:
            break
    ms.set_keep(keeps)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


def shrink_channels(model: nn.Module, keep: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of ``model`` (plain, unparametrised) with only the ``keep`` channels of each group.

    ``keep`` maps a group's conv name to a bool vector (or index tensor) of kept output channels.
    """
    model = copy.deepcopy(model)
    plan = {g.conv: g for g in channel_plan(model)}
    unknown = [n for n in keep if n not in plan]
    if unknown:
        raise ConfigError(f"{unknown} are not prunable channel groups; valid: {list(plan)}")
    idx = {n: (torch.nonzero(k).flatten() if k.dtype == torch.bool else k.long())
           for n, k in keep.items()}
    in_idx = {c: idx[n] for n in idx for c in plan[n].consumers}
    mods = dict(model.named_modules())
    for name in set(idx) | set(in_idx):
        layer = mods[name]
        w = layer.weight.detach()
        o_sel = idx.get(name, torch.arange(w.shape[0]))
        i_sel = in_idx.get(name, torch.arange(w.shape[1]))
        w = w[o_sel][:, i_sel].clone()
        bias = layer.bias.detach()[o_sel].clone() if layer.bias is not None else None
        if isinstance(layer, nn.Conv2d):
            new: nn.Module = nn.Conv2d(len(i_sel), len(o_sel), layer.kernel_size, stride=layer.stride,
                                       padding=layer.padding, dilation=layer.dilation,
                                       bias=bias is not None)
        else:
            new = nn.Linear(len(i_sel), len(o_sel), bias=bias is not None)
        new.weight.data.copy_(w)
        if bias is not None:
            new.bias.data.copy_(bias)
        _replace(model, name, new.to(w.device))
    for name, sel in idx.items():
        bn = mods[plan[name].bn]
        new_bn = nn.BatchNorm2d(len(sel), eps=bn.eps, momentum=bn.momentum).to(sel.device)
        for attr in ("weight", "bias", "running_mean", "running_var"):
            getattr(new_bn, attr).data.copy_(getattr(bn, attr).detach()[sel])
        new_bn.num_batches_tracked.copy_(bn.num_batches_tracked)
        _replace(model, plan[name].bn, new_bn)
    head = getattr(model, "classifier", None)
    if isinstance(head, nn.Linear):
        model.feature_dim = head.in_features
    return model


def channel_counts(model: nn.Module) -> dict[str, int]:
    """Output channels of every prunable group's conv (what ``load_pruned`` needs to rebuild)."""
    mods = dict(model.named_modules())
    return {g.conv: int(_shape(mods[g.conv])[0]) for g in channel_plan(model)}


def count_macs(model: nn.Module, *, input_size: int | None = None) -> int:
    """Multiply-accumulates of all conv and linear layers for one image (analytic, via shapes)."""
    total = [0]

    def hook(mod: nn.Module, _inp, out: torch.Tensor) -> None:
        if isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
            total[0] += int(out[0].numel()) * k
        else:
            total[0] += mod.in_features * mod.out_features

    hooks = [m.register_forward_hook(hook) for m in model.modules()
             if isinstance(m, (nn.Conv2d, nn.Linear))]
    size = input_size or int(getattr(model, "input_size", 32))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            dev = next(model.parameters()).device
            model(torch.zeros(1, int(getattr(model, "in_channels", 3)), size, size, device=dev))
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return total[0]
