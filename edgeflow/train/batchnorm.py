"""BatchNorm statistics frozen while the rest of a network trains (fine-tuning a pretrained one).

A pretrained network fine-tuned on a small set at a small batch loses much of its features'
quality when its BatchNorm layers re-estimate their statistics: EfficientNet-Lite0 at 96 px, 38
steps at lr 0.005 on 2,400 Tiny-ImageNet base images, gave 5-way 5-shot prototype accuracy on the
val classes of 58.9% with BatchNorm in train mode against 68.0% with it frozen (72.9% before any
step). Frozen means eval mode: the running statistics normalise and are not updated; the affine
scale and shift still learn.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


def _stay_in_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(self, False)


@contextmanager
def frozen_batchnorm(model: nn.Module, *, enabled: bool = True) -> Iterator[None]:
    """Inside the block every BatchNorm layer of ``model`` stays in eval mode, whatever
    ``model.train()`` (or an evaluation that restores train mode) asks; restored on exit."""
    if not enabled:
        yield
        return
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    was = [m.training for m in layers]
    for m in layers:
        m.train = types.MethodType(_stay_in_eval, m)  # nn.Module.train recurses through it
        nn.Module.train(m, False)
    try:
        yield
    finally:
        for m, mode in zip(layers, was, strict=True):
            del m.train
            nn.Module.train(m, mode)
