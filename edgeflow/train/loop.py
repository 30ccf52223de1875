"""A small, reusable supervised loop: SGD/Adam, cosine schedule, crop+flip, label smoothing."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from edgeflow.data import ImageDataset, Preprocess, preprocess
from edgeflow.errors import ConfigError, unknown_name
from edgeflow.progress import ProgressBar
from edgeflow.train.augment import random_crop_flip
from edgeflow.train.batchnorm import frozen_batchnorm

OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class TrainConfig:
    """Options of :func:`fit`. ``lr`` is the peak; it decays to ``lr * final_lr_frac`` (cosine)."""

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.05
    final_lr_frac: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    augment: bool = True
    crop_padding: int = 4
    seed: int = 0
    device: str = "auto"
    freeze_bn: bool = False  # BatchNorm statistics frozen (edgeflow.train.batchnorm)

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise unknown_name("optimizer", self.optimizer, OPTIMIZERS)
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError(f"epochs >= 0, batch_size >= 1 and lr > 0 are required; got "
                              f"{self.epochs}, {self.batch_size}, {self.lr}")


@dataclass
class History:
    """Per-epoch metrics (dicts with epoch, loss, train_acc, val_acc, lr, seconds)."""

    epochs: list[dict] = field(default_factory=list)

    @property
    def last(self) -> dict:
        return self.epochs[-1] if self.epochs else {}


def resolve_device(device: str = "auto") -> torch.device:
    """"auto" -> CUDA when available, else CPU; anything else is checked and returned."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for but CUDA is not available here; use "
                          "--device cpu (or auto)")
    return dev


def to_tensor(ds: ImageDataset, spec: Preprocess) -> tuple[torch.Tensor, torch.Tensor]:
    """Preprocess a whole dataset once: (float32 NCHW, int64 labels)."""
    return torch.from_numpy(preprocess(ds.images, spec)), torch.from_numpy(ds.labels)


def batches(x: torch.Tensor, y: torch.Tensor, *, batch_size: int, shuffle: bool,
            generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Minibatches of (x, y); shuffled with ``generator`` when asked."""
    n = len(y)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for i in range(0, n, batch_size):
        idx = order[i:i + batch_size]
        yield x[idx], y[idx]


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 256,
             device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy (a fraction) of ``model`` in eval mode."""
    was_training = model.training
    model.eval()
    correct = 0
    for xb, yb in batches(x, y, batch_size=batch_size, shuffle=False):
        correct += int((model(xb.to(device)).argmax(1).cpu() == yb).sum())
    model.train(was_training)
    return correct / max(1, len(y))


def make_optimizer(params, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay, nesterov=config.momentum > 0)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def cosine_lr(step: int, total: int, *, peak: float, final_frac: float) -> float:
    """Cosine from ``peak`` at step 0 to ``peak * final_frac`` at ``total``."""
    t = min(1.0, step / max(1, total))
    return peak * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * t)))


def fit(model: nn.Module, train: tuple[torch.Tensor, torch.Tensor], *, config: TrainConfig,
        val: tuple[torch.Tensor, torch.Tensor] | None = None, progress: bool = False,
        on_epoch_end: Callable[[dict], None] | None = None) -> History:
    """Train ``model`` on preprocessed ``train`` = (x, y); return per-epoch metrics.

    Under ``torchrun`` the model is wrapped in DistributedDataParallel and each rank takes an equal
    share of one shared permutation per epoch (the same number of steps everywhere, so gradient
    all-reduces line up); metrics are summed over ranks. On CUDA it trains in mixed precision
    (bf16 where supported, else fp16 with loss scaling) from pinned host memory.
    ``on_epoch_end`` receives each epoch's metrics (the CLI streams them; stages checkpoint).
    """
    with frozen_batchnorm(model, enabled=config.freeze_bn):
        return _fit(model, train, config=config, val=val, progress=progress,
                    on_epoch_end=on_epoch_end)


def _fit(model: nn.Module, train: tuple[torch.Tensor, torch.Tensor], *, config: TrainConfig,
         val: tuple[torch.Tensor, torch.Tensor] | None, progress: bool,
         on_epoch_end: Callable[[dict], None] | None) -> History:
    from edgeflow import distributed

    device = distributed.device_for_rank(resolve_device(config.device))
    rank = distributed.setup(device)
    torch.manual_seed(config.seed)
    order_gen = torch.Generator().manual_seed(config.seed)  # identical on every rank
    aug_gen = torch.Generator().manual_seed(config.seed + 7919 * rank.rank)
    model.to(device).train()
    net = distributed.wrap_ddp(model, device)
    opt = make_optimizer(model.parameters(), config)
    amp_dtype = None
    if device.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    x, y = train
    # batch_size is the global batch: each rank takes its share, so K processes take the same
    # optimiser steps with the same schedule as one process.
    total = distributed.steps_per_epoch(len(y), config.batch_size) * config.epochs
    history = History()
    bar = ProgressBar(progress and rank.is_main, total, "train")
    step = 0
    lr = config.lr
    for epoch in range(config.epochs):
        t0 = time.perf_counter()
        loss_sum, correct, seen = 0.0, 0, 0
        for idx in distributed.rank_batches(len(y), batch_size=config.batch_size,
                                            generator=order_gen):
            xb, yb = x[idx], y[idx]
            if device.type == "cuda":
                xb, yb = xb.pin_memory().to(device, non_blocking=True), yb.to(device)
            if config.augment:
                xb = random_crop_flip(xb, padding=config.crop_padding, generator=aug_gen)
            lr = cosine_lr(step, total, peak=config.lr, final_frac=config.final_lr_frac)
            for g in opt.param_groups:
                g["lr"] = lr
            xb, yb = xb.to(device), yb.to(device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = net(xb)
                loss = F.cross_entropy(logits.float(), yb, label_smoothing=config.label_smoothing)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            loss_sum += loss.item() * len(yb)
            correct += int((logits.argmax(1) == yb).sum())
            seen += len(yb)
            step += 1
            bar.advance(f"epoch {epoch + 1}/{config.epochs} loss {loss_sum / seen:.3f} "
                        f"acc {correct / seen:.3f}")
        loss_sum, correct, seen = distributed.all_reduce_sum([loss_sum, correct, seen], device)
        metrics = {"epoch": epoch + 1, "loss": loss_sum / max(1, seen),
                   "train_acc": correct / max(1, seen), "lr": lr,
                   "seconds": time.perf_counter() - t0}
        if val is not None:
            metrics["val_acc"] = evaluate(model, *val, device=device)
        history.epochs.append(metrics)
        if on_epoch_end is not None:
            on_epoch_end(metrics)
    bar.close()
    distributed.sync_buffers(model)  # replicas end bit-identical, BatchNorm statistics included
    model.eval()
    return history

