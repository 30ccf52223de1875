"""finalize(): plain modules, exact zeros, channel surgery equivalence, checkpoint round trip."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgeflow.errors import ConfigError
from edgeflow.models import create_model
from edgeflow.prune import (
    attach_scores,
    channel_plan,
    count_macs,
    finalize,
    load_pruned,
    nm_pattern_ok,
    save_pruned,
    sparsity_report,
)


def _randomise_bn(model: nn.Module, gen: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=gen))
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen))


@pytest.mark.parametrize(("name", "kwargs", "size"), [("resnet20", {}, 32),
                                                     ("vgg11", {"width_mult": 0.25}, 32),
                                                     ("conv4", {"width": 16}, 32)])
def test_channel_surgery_matches_masked_model(name, kwargs, size):
    gen = torch.Generator().manual_seed(1)
    net = create_model(name, num_classes=10, **kwargs).eval()
    _randomise_bn(net, gen)
    ms = attach_scores(net, granularity="channel")
    keep = {}
    for n, mk in ms.masks.items():
        k = torch.rand(mk.scores.shape, generator=gen) < 0.5
        k[0] = True  # never an empty layer
        keep[n] = k
    ms.set_keep(keep)
    x = torch.randn(4, 3, size, size, generator=gen)
    with torch.no_grad():
        masked = net(x)
    plain = finalize(net).eval()
    with torch.no_grad():
        small = plain(x)
    torch.testing.assert_close(small, masked, rtol=1e-4, atol=1e-5)
    assert count_macs(plain) < count_macs(create_model(name, num_classes=10, **kwargs))
    mods = dict(plain.named_modules())
    for n, k in keep.items():
        assert mods[n].out_channels == int(k.sum())
    assert not any("scores" in k or "parametrizations" in k for k in plain.state_dict())


def test_channel_plan_rejects_unsupported_model():
    with pytest.raises(ConfigError, match="resnet20"):
        channel_plan(create_model("resnet12", num_classes=5))


@pytest.mark.parametrize("granularity", ["weight", "2:4"])
def test_finalize_leaves_plain_module_with_exact_zeros(granularity, tmp_path):
    torch.manual_seed(0)
    net = create_model("resnet20", num_classes=10).eval()
    ms = attach_scores(net, granularity=granularity)
    ms.trim(0.2 if granularity == "weight" else 0.45)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        masked = net(x)
    plain = finalize(net).eval()
    assert not any("scores" in k or "parametrizations" in k for k in plain.state_dict())
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                   for m in plain.modules())
    assert all(type(p) is nn.Parameter for p in plain.parameters())
    with torch.no_grad():
        torch.testing.assert_close(plain(x), masked)
    rep = sparsity_report(plain)
    want = 0.8 if granularity == "weight" else 0.55
    assert abs(rep["sparsity"] - want) < 1e-3  # exact count; rounding only
    if granularity == "2:4":
        for name, mod in plain.named_modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)) and mod.weight.shape[1] % 4 == 0:
                assert nm_pattern_ok(mod.weight, 2, 4), name
    # masked model untouched by finalize
    assert any("parametrizations" in k for k in net.state_dict())
    path = save_pruned(tmp_path / "p.pt", plain, meta={"model": "resnet20", "model_kwargs": {},
                                                       "num_classes": 10})
    torch.load(path, weights_only=True)
    again = load_pruned(path)
    with torch.no_grad():
        torch.testing.assert_close(again(x), masked)


def test_load_pruned_rebuilds_channel_model(tmp_path):
    net = create_model("vgg11", num_classes=10, width_mult=0.25).eval()
    ms = attach_scores(net, granularity="channel")
    ms.trim(0.5)
    plain = finalize(net).eval()
    path = save_pruned(tmp_path / "c.pt", plain, meta={"model": "vgg11", "num_classes": 10,
                                                       "model_kwargs": {"width_mult": 0.25}})
    again = load_pruned(path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again(x), plain(x))
    assert ms.density() <= 0.5


def test_channel_trim_respects_minimum_and_multiple():
    net = create_model("resnet20", num_classes=10)
    ms = attach_scores(net, granularity="channel")
    ms.trim(0.45, budget="flops", min_channels=8, multiple=8)
    for mk in ms.masks.values():
        kept = int(mk.keep().sum())
        assert kept >= 8 and kept % 8 == 0
    assert 0.4 < ms.density("flops") <= 0.45
