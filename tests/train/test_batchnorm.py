"""Frozen BatchNorm: running statistics untouched while the rest trains; modes restored after."""

from __future__ import annotations

import torch
from torch import nn

from edgeflow.prune import PruneConfig, prune
from edgeflow.train import TrainConfig, fit
from edgeflow.train.batchnorm import frozen_batchnorm


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(64, 3, 8, 8, generator=g) * 3 + 1, torch.randint(0, 4, (64,), generator=g)


def _stats(net: nn.Module) -> list[torch.Tensor]:
    bn = net[1]
    return [bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()]


def test_fit_with_frozen_batchnorm_keeps_statistics_and_trains_the_rest():
    for freeze in (False, True):
        net = _net()
        before, w, shift = _stats(net), net[0].weight.clone(), net[1].bias.clone()
        fit(net, _data(), config=TrainConfig(epochs=2, lr=0.1, batch_size=16, device="cpu",
                                             freeze_bn=freeze), val=_data())  # val: train() again
        after = _stats(net)
        same = all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
        assert same == freeze  # frozen: untouched; otherwise re-estimated
        assert not torch.equal(net[0].weight, w) and not torch.equal(net[1].bias, shift)
        assert not hasattr(net[1], "__dict__") or "train" not in net[1].__dict__  # override gone
        net.train()
        assert net[1].training  # train mode works again after the block


def test_prune_with_frozen_batchnorm_keeps_statistics():
    net = _net()
    before = _stats(net)
    prune(net, _data(), config=PruneConfig(sparsity=0.5, epochs=1, regrowth_epochs=0,
                                           batch_size=16, device="cpu", freeze_bn=True))
    assert all(torch.equal(a, b) for a, b in zip(before, _stats(net), strict=True))


def test_the_block_restores_each_layers_mode():
    net = _net().eval()
    with frozen_batchnorm(net):
        net.train()
        assert net[0].training and not net[1].training
    assert not net[1].training  # it was in eval mode before the block
