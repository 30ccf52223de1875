"""Model zoo: ``create_model(name, num_classes=..., weights=None, **kw)`` over a literal registry."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from edgeflow.errors import ConfigError, unknown_name
from edgeflow.models.base import Backbone
from edgeflow.models.cifar_resnet import CifarResNet
from edgeflow.models.efficientnet_lite import EfficientNetLite
from edgeflow.models.resnet import ResNet12, ResNet18
from edgeflow.models.small import VGG, Conv4

MODELS: dict[str, Callable[..., Backbone]] = {
    "conv4": Conv4,
    "efficientnet_lite0": EfficientNetLite,
    "resnet12": ResNet12,
    "resnet18": ResNet18,
    "resnet20": partial(CifarResNet, 20),
    "resnet32": partial(CifarResNet, 32),
    "resnet56": partial(CifarResNet, 56),
    "vgg11": partial(VGG, 11),
    "vgg19": partial(VGG, 19),
}

__all__ = ["MODELS", "Backbone", "create_model", "model_names"]


def model_names() -> list[str]:
    return sorted(MODELS)


def create_model(name: str, *, num_classes: int = 10, weights: str | Path | None = None,
                 **kwargs) -> Backbone:
    """Build ``name`` with ``num_classes`` outputs; load ``weights`` (a checkpoint) if given.

    Extra keyword arguments go to the builder (``in_channels``, ``width``, ``small_input``...).
    A checkpoint whose head has another number of classes loads its body and keeps a fresh head.
    """
    if name not in MODELS:
        raise unknown_name("model", name, list(MODELS))
    try:
        model = MODELS[name](num_classes=num_classes, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"model {name!r} does not take these options {sorted(kwargs)}: {exc}") \
            from exc
    if weights is not None:
        from edgeflow.checkpoint import load_weights

        load_weights(model, weights)
    return model
