"""Train and validate as functions (the CLI is a thin shell over these; so is the pipeline)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from edgeflow import distributed
from edgeflow.data import ImageDataset, Preprocess, load_dataset
from edgeflow.errors import ConfigError
from edgeflow.models import Backbone, check_model_name, create_model, is_custom


def preprocess_for(model: Backbone, meta: dict[str, Any] | None, size: int | None) -> Preprocess:
    """The checkpoint's preprocessing if it recorded one, else the model's own normalisation
    (``preprocess_mean``/``preprocess_std`` attributes) or ImageNet statistics, at ``size``."""
    if meta and "preprocess" in meta:
        spec = Preprocess.from_dict(meta["preprocess"])
        if size is not None and size != spec.size:
            spec = Preprocess(size=size, channels=spec.channels, mean=spec.mean, std=spec.std)
        return spec
    # a model trained with its own normalisation says so (EfficientNet-Lite: (x - 127) / 128)
    norm = {k: getattr(model, f"preprocess_{k}") for k in ("mean", "std")
            if getattr(model, f"preprocess_{k}", None) is not None}
    return Preprocess(size=size or model.input_size, channels=model.in_channels, **norm)


def checkpoint_meta(model_name: str, model: Backbone, classes: tuple[str, ...],
                    spec: Preprocess, model_kwargs: dict | None = None, **extra: Any) -> dict:
    """The metadata every EdgeFlow checkpoint carries so later stages need no repeated flags."""
    return {"model": model_name, "model_kwargs": model_kwargs or {}, "num_classes": len(classes),
            "classes": list(classes), "preprocess": spec.to_dict(),
            "feature_dim": model.feature_dim, **extra}


def _default_size(ds: ImageDataset, model: Backbone, size: int | None) -> int:
    if size is not None:
        return size
    h, w, _ = ds.image_shape
    return h if h == w else model.input_size


def train_model(*, model: str, data: str, epochs: int, output: Path, weights: Path | None = None,
                val_data: str | None = None, lr: float = 0.05, batch_size: int = 128,
                optimizer: str = "sgd", weight_decay: float = 5e-4, label_smoothing: float = 0.0,
                augment: bool = True, size: int | None = None, split: str | None = None,
                limit: int | None = None, seed: int = 0, device: str = "auto",
                progress: bool = False, model_kwargs: dict | None = None,
                head: str = "") -> dict[str, Any]:
    """Train ``model`` on ``data`` and write a checkpoint with metadata; return the metrics.

    ``model`` may be your own (``package.module:build``, ``head`` its classifier Linear when it
    cannot be found alone); the checkpoint records that spec, and reading it imports it again.
    """
    from edgeflow.checkpoint import load_weights, save_checkpoint
    from edgeflow.train import TrainConfig, fit, to_tensor

    check_model_name(model)
    if head and not is_custom(model):
        raise ConfigError(f"--head is for your own model (package.module:build), not {model!r}")
    ds = load_dataset(data, split=split, limit=limit, progress=progress)
    if is_custom(model):  # probed at the size it trains at; recorded for every later rebuild
        model_kwargs = {"head": head, "input_size": size or ds.image_shape[0],
                        **(model_kwargs or {})}
    torch.manual_seed(seed)  # the initial weights too: same seed, same checkpoint
    net = create_model(model, num_classes=ds.num_classes, **(model_kwargs or {}))
    meta = load_weights(net, weights) if weights is not None else None
    spec = preprocess_for(net, meta, _default_size(ds, net, size))
    config = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer,
                         weight_decay=weight_decay, label_smoothing=label_smoothing,
                         augment=augment, seed=seed, device=device)
    val = None
    if val_data is not None:
        vds = load_dataset(val_data, split=split, progress=progress)
        if vds.classes != ds.classes:
            raise ConfigError(f"--val-data has classes {list(vds.classes[:4])}... but --data has "
                              f"{list(ds.classes[:4])}...; both need the same class folders")
        val = to_tensor(vds, spec)
    history = fit(net, to_tensor(ds, spec), config=config, val=val, progress=progress)
    net.cpu()
    rank = distributed.info()
    if rank.is_main:  # one writer; the other ranks hold identical weights (DDP)
        save_checkpoint(output, state_dict=net.state_dict(),
                        meta=checkpoint_meta(model, net, ds.classes, spec, model_kwargs,
                                             train={"data": str(data), "epochs": epochs,
                                                    "world_size": rank.world_size}))
    distributed.barrier()
    last = history.last
    return {"output": str(output), "epochs": epochs, "world_size": rank.world_size,
            "train_acc": last.get("train_acc"),
            "loss": last.get("loss"), "val_top1": last.get("val_acc"),
            "history": history.epochs}


def validate_model(*, model: str, weights: Path, data: str, limit: int | None = None,
                   size: int | None = None, split: str | None = None, device: str = "auto",
                   progress: bool = False) -> dict[str, Any]:
    """Top-1 accuracy of a checkpoint on ``data`` (a fraction in [0, 1])."""
    from edgeflow.checkpoint import load_checkpoint
    from edgeflow.train import evaluate, resolve_device, to_tensor

    check_model_name(model)
    ds = load_dataset(data, split=split, limit=limit, progress=progress)
    sd, meta = load_checkpoint(weights)
    head = next((v for k, v in sd.items() if k.split(".")[0] in ("linear", "classifier")
                 and k.endswith("weight")), None)
    num_classes = int(head.shape[0]) if head is not None else ds.num_classes
    if num_classes != ds.num_classes:
        raise ConfigError(f"{weights} classifies {num_classes} classes but {data} has "
                          f"{ds.num_classes}; validate on data with the training classes")
    net = create_model(model, num_classes=num_classes, weights=weights,
                       **meta.get("model_kwargs", {}))
    spec = preprocess_for(net, meta, size)
    dev = resolve_device(device)
    top1 = evaluate(net.to(dev), *to_tensor(ds, spec), device=dev)
    return {"top1": top1, "images": len(ds), "classes": ds.num_classes, "model": model,
            "weights": str(weights), "data": str(data)}
