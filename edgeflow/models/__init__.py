"""Model zoo: ``create_model(name, num_classes=..., weights=None, **kw)`` over a literal registry.

``name`` is a zoo name, or a user model: an import path ``package.module:build`` (a callable that
returns a ``torch.nn.Module``) or a name from :func:`register_object`; those are wrapped as a
:class:`~edgeflow.models.custom.CustomBackbone` (see :mod:`edgeflow.models.custom`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from edgeflow.errors import ConfigError, unknown_name
from edgeflow.models.base import Backbone
from edgeflow.models.cifar_resnet import CifarResNet
from edgeflow.models.custom import CustomBackbone, build_custom, is_custom, register_object
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

# zoo models with published ImageNet weights (``create_model(..., pretrained=True)``; compile's
# ``[backbone] weights = "imagenet"``)
PRETRAINED = ("efficientnet_lite0",)
IMAGENET = "imagenet"

__all__ = ["IMAGENET", "MODELS", "PRETRAINED", "Backbone", "CustomBackbone", "check_model_name",
           "create_model", "is_custom", "model_names", "register_object", "zoo_normalisation"]
CUSTOM_OPTIONS = ("head", "input_size", "in_channels")


def model_names() -> list[str]:
    return sorted(MODELS)


def check_model_name(name: str) -> None:
    """Refuse a name that is neither a zoo model nor a user model spec (nothing is imported)."""
    if not is_custom(name) and name not in MODELS:
        raise ConfigError(f"{unknown_name('model', name, list(MODELS))}, or your own model as "
                          "package.module:build (a callable returning a torch.nn.Module)")


def create_model(name: str, *, num_classes: int | None = 10, weights: str | Path | None = None,
                 **kwargs) -> Backbone:
    """Build ``name`` with ``num_classes`` outputs; load ``weights`` (a checkpoint) if given.
    ``num_classes=None`` keeps a user model's own head (zoo models need a number).

    Extra keyword arguments go to the builder (``in_channels``, ``width``, ``small_input``...).
    A checkpoint whose head has another number of classes loads its body and keeps a fresh head.
    A user model (``package.module:build``) takes ``head``, ``input_size`` and ``in_channels`` only.
    """
    check_model_name(name)
    if is_custom(name):
        extra = sorted(set(kwargs) - set(CUSTOM_OPTIONS))
        if extra:
            raise ConfigError(f"options {extra} apply to zoo models only; your own model {name!r} "
                              f"takes {', '.join(CUSTOM_OPTIONS)}")
        model: Backbone = build_custom(name, num_classes=num_classes, **kwargs)
    else:
        model = _build_zoo(name, num_classes, kwargs)
    if weights is not None:
        from edgeflow.checkpoint import load_weights

        load_weights(model, weights)
    return model


def zoo_normalisation(name: str) -> dict[str, tuple[float, ...]]:
    """A zoo model's own input normalisation as Preprocess keywords (EfficientNet-Lite:
    ``(x - 127) / 128``), or {} for the default (ImageNet statistics) and for user models."""
    builder = MODELS.get(name)
    cls = getattr(builder, "func", builder)
    return {k: getattr(cls, f"preprocess_{k}") for k in ("mean", "std")
            if getattr(cls, f"preprocess_{k}", None) is not None}


def _build_zoo(name: str, num_classes: int, kwargs: dict) -> Backbone:
    try:
        model = MODELS[name](num_classes=num_classes, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"model {name!r} does not take these options {sorted(kwargs)}: {exc}") \
            from exc
    return model
