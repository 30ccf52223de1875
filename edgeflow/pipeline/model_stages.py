"""Compile stages that make the backbone: data preparation, training, pruning, recovery."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from edgeflow.data import ImageDataset, Preprocess, load_dataset
from edgeflow.errors import ConfigError
from edgeflow.pipeline.config import CompileConfig, parse_int_list

if TYPE_CHECKING:
    from edgeflow.prune.config import PruneConfig
    from edgeflow.train import TrainConfig


@dataclass(frozen=True)
class CompileData:
    """Everything the stages train and evaluate on."""

    train: ImageDataset  # base classes, training images
    holdout: ImageDataset  # base classes, held-out images (backbone top-1, default val tasks)
    val: ImageDataset  # hyper-parameter episodes (val data, else ``holdout``)
    novel: ImageDataset  # few-shot evaluation classes
    preprocess: Preprocess
    cross: dict[str, ImageDataset] = field(default_factory=dict)  # other domains, by short name


def _classes(ds: ImageDataset, text: str, what: str) -> ImageDataset:
    from edgeflow.adapt.evaluate import select_classes  # shared with `edgeflow evaluate --classes`

    return select_classes(ds, parse_int_list(text, name=what), what=what)


def prepare_data(cfg: CompileConfig, *, progress: bool) -> CompileData:
    """Load base/val/novel data; split base into training and held-out images (10% per class, and
    at least what one validation episode needs, seeded); check that the episodes are possible."""
    d = cfg.data
    base = _classes(load_dataset(d.base, size=d.size, progress=progress), d.base_classes,
                    "data.base_classes")
    novel = _classes(load_dataset(d.novel, size=d.size, progress=progress), d.novel_classes,
                     "data.novel_classes")
    if cfg.eval.ways > novel.num_classes:
        raise ConfigError(f"eval.ways is {cfg.eval.ways} but the novel data has only "
                          f"{novel.num_classes} classes; lower --eval-ways or add novel classes")
    rng = np.random.default_rng(cfg.seed)
    need = max(parse_int_list(cfg.eval.shots, name="eval.shots")) + cfg.eval.queries
    hold = []
    for c in range(base.num_classes):
        idx = np.nonzero(base.labels == c)[0]
        if len(idx) < 2 * need and not d.val:
            raise ConfigError(f"base class {base.classes[c]!r} has {len(idx)} images; validation "
                              f"episodes need {need} held out and as many to train on: give "
                              "--data-val or lower --eval-shots/--eval-queries")
        hold.extend(rng.permutation(idx)[:max(need, len(idx) // 10)].tolist())
    mask = np.zeros(len(base), dtype=bool)
    mask[hold] = True
    train, holdout = base.subset(np.nonzero(~mask)[0]), base.subset(np.nonzero(mask)[0])
    if d.limit:
        from edgeflow.data import stratified_limit

        train = train.subset(stratified_limit(train.labels, d.limit))
    val = holdout
    if d.val:
        val = load_dataset(d.val, size=d.size, progress=progress)
    channels = 3  # grey data is repeated to RGB so one backbone serves every domain
    # the model's own normalisation where it has one: pretrained EfficientNet-Lite expects
    # (x - 127) / 128, and ImageNet statistics give it broken features
    from edgeflow.models import zoo_normalisation

    norm = zoo_normalisation(cfg.backbone.model)
    # loaded now, so that a wrong path fails before training rather than at the last stage
    cross = {name: load_dataset(path, size=d.size, progress=progress)
             for name, path in cross_domain_sets(cfg.eval.cross_domain).items()}
    for name, ds in cross.items():
        if cfg.eval.ways > ds.num_classes:
            raise ConfigError(f"eval.cross_domain: {name} has {ds.num_classes} classes, fewer than "
                              f"eval.ways = {cfg.eval.ways}; drop it or lower --eval-ways")
    return CompileData(train, holdout, val, novel, Preprocess(size=d.size, channels=channels, **norm),
                       cross)


def cross_domain_sets(text: str) -> dict[str, str]:
    """'a/mnist/test.zip,b/gtsrb/test.zip' -> {'mnist/test': ..., 'gtsrb/test': ...}: the short
    name is the folder and the file's stem (a dataset's zips are called train/test/...)."""
    out: dict[str, str] = {}
    for path in filter(None, (p.strip() for p in text.split(","))):
        p = Path(path)
        name = f"{p.parent.name}/{p.stem}" if p.parent.name else p.stem
        if name in out:
            raise ConfigError(f"eval.cross_domain lists {name!r} twice ({out[name]!r} and {path!r})")
        out[name] = path
    return out


def model_kwargs(model: str, width: int, *, head: str = "", size: int = 32) -> dict[str, Any]:
    """The width option in each model family's own terms (0 = the family's default); for your own
    model (``package.module:build``) its head and the input size it is probed at instead."""
    if ":" in model:
        return {"head": head, "input_size": size}
    if not width:
        return {}
    if model == "resnet12":
        return {"widths": (width, int(2.5 * width), 5 * width, 10 * width)}
    if model.startswith("vgg"):
        return {"width_mult": width / 64}
    return {"width": width}


def train_backbone(cfg: CompileConfig, data: CompileData, out: Path, *,
                   progress: bool) -> dict[str, Any]:
    """Train (or load) the backbone on the base classes; write ``backbone.pt``."""
    from edgeflow.checkpoint import load_weights, save_checkpoint
    from edgeflow.models import IMAGENET, create_model
    from edgeflow.train import evaluate, fit, to_tensor
    from edgeflow.workflows import checkpoint_meta

    b = cfg.backbone
    kwargs = model_kwargs(b.model, b.width, head=b.head, size=cfg.data.size)
    torch.manual_seed(cfg.seed)
    # published weights load into the body; the classifier stays fresh (base classes != ImageNet's)
    # and `pretrained` stays out of kwargs: later stages rebuild the model from backbone.pt
    net = create_model(b.model, num_classes=data.train.num_classes, **kwargs,
                       **({"pretrained": True} if b.weights == IMAGENET else {}))
    if b.weights and b.weights != IMAGENET:
        load_weights(net, b.weights)
    history: list[dict] = []
    if b.epochs:
        history = fit(net, to_tensor(data.train, data.preprocess), config=backbone_train_config(cfg),
                      progress=progress).epochs
    net.cpu().eval()
    top1 = evaluate(net, *to_tensor(data.holdout, data.preprocess))
    save_checkpoint(out / "backbone.pt", state_dict=net.state_dict(),
                    meta=checkpoint_meta(b.model, net, data.train.classes, data.preprocess, kwargs,
                                         train={"epochs": b.epochs, "data": cfg.data.base}))
    return {"checkpoint": "backbone.pt", "top1": top1, "params": _params(net),
            "history": history}


def backbone_train_config(cfg: CompileConfig) -> TrainConfig:
    """The backbone stage's TrainConfig: the ``[backbone]`` section plus the library's defaults."""
    from edgeflow.train import TrainConfig

    b = cfg.backbone
    return TrainConfig(epochs=b.epochs, lr=b.lr, batch_size=b.batch_size, label_smoothing=0.1,
                       crop_padding=max(1, cfg.data.size // 8), seed=cfg.seed, device=cfg.device,
                       freeze_bn=b.freeze_bn)


def prune_config(cfg: CompileConfig) -> PruneConfig:
    """The prune stage's PruneConfig: the ``[prune]`` section plus the library's defaults."""
    from edgeflow.prune.config import PruneConfig

    p = cfg.prune
    return PruneConfig(sparsity=p.sparsity, granularity=p.granularity, method=p.method,
                       epochs=p.epochs, regrowth_epochs=p.regrowth_epochs,
                       batch_size=cfg.backbone.batch_size, seed=cfg.seed, device=cfg.device,
                       freeze_bn=cfg.backbone.freeze_bn, **({"lr": p.lr} if p.lr else {}))


def recovery_train_config(cfg: CompileConfig) -> TrainConfig:
    """The recovery stage's TrainConfig (a fifth of the backbone's learning rate, its zeros held)."""
    from edgeflow.train import TrainConfig

    return TrainConfig(epochs=cfg.prune.recovery_epochs, lr=cfg.backbone.lr / 5,
                       batch_size=cfg.backbone.batch_size, label_smoothing=0.1,
                       crop_padding=max(1, cfg.data.size // 8), seed=cfg.seed + 1,
                       device=cfg.device, freeze_bn=cfg.backbone.freeze_bn)


def resolved(*configs: Any) -> dict[str, Any]:
    """The library configurations a stage runs with, as a part of its cache key: a changed library
    default then reruns the stage instead of reusing a result made under the old one."""
    return {"resolved": [asdict(c) for c in configs]}


def _params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _nonzero_params(net: nn.Module) -> int:
    return sum(int((p != 0).sum()) for p in net.parameters())


def prune_backbone(cfg: CompileConfig, data: CompileData, backbone_ckpt: Path, out: Path, *,
                   progress: bool) -> dict[str, Any]:
    """Hyperflows (or a baseline) at the configured granularity; write a finalized ``pruned.pt``."""
    from edgeflow.checkpoint import load_checkpoint
    from edgeflow.models import create_model
    from edgeflow.prune.channel import count_macs
    from edgeflow.prune.finalize import finalize, save_pruned, sparsity_report
    from edgeflow.prune.hyperflows import prune
    from edgeflow.train import evaluate, to_tensor

    p = cfg.prune
    sd, meta = load_checkpoint(backbone_ckpt)
    net = create_model(meta["model"], num_classes=meta["num_classes"], **meta["model_kwargs"])
    net.load_state_dict(sd)
    reference = {n: m.weight.numel() for n, m in net.named_modules()
                 if isinstance(m, (nn.Conv2d, nn.Linear))}
    dense_macs = count_macs(net, input_size=cfg.data.size)
    result = prune(net, to_tensor(data.train, data.preprocess), config=prune_config(cfg),
                   progress=progress)
    plain = finalize(net).cpu().eval()
    report = sparsity_report(plain, reference)
    top1 = evaluate(plain, *to_tensor(data.holdout, data.preprocess))
    meta = {**meta, "prune": {"method": p.method, "granularity": p.granularity,
                              "sparsity": report["sparsity"], "requested_sparsity": p.sparsity}}
    save_pruned(out / "pruned.pt", plain, meta=meta)
    return {"checkpoint": "pruned.pt", "top1": top1, "sparsity": report["sparsity"],
            "density": report["density"], "macs": count_macs(plain, input_size=cfg.data.size),
            "dense_macs": dense_macs, "params": _params(plain), "nonzero_params": _nonzero_params(plain),
            "seconds": result.seconds, "reach_step": result.reach_step}


def keep_zeros(model: nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
    """Mask the gradients of pruned (zero) conv/linear weights so fine-tuning keeps them zero.

    With a zero gradient a zero weight stays exactly zero under SGD (its weight decay and momentum
    terms are zero too) and AdamW, so unstructured and 2:4 patterns survive recovery.
    """
    handles = []
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            mask = (m.weight.detach() != 0).to(m.weight.dtype)
            if mask.min() < 1:
                handles.append(m.weight.register_hook(lambda g, mask=mask: g * mask.to(g.device)))
    return handles


def recover(cfg: CompileConfig, data: CompileData, pruned_ckpt: Path, out: Path, *,
            progress: bool) -> dict[str, Any]:
    """A short fine-tune of the pruned model with its zeros held; write ``recovered.pt``."""
    from edgeflow.checkpoint import load_checkpoint, save_checkpoint
    from edgeflow.prune.finalize import load_pruned, sparsity_report
    from edgeflow.train import evaluate, fit, to_tensor

    net = load_pruned(pruned_ckpt)
    _, meta = load_checkpoint(pruned_ckpt)
    before = sparsity_report(net)["sparsity"]
    handles = keep_zeros(net)
    fit(net, to_tensor(data.train, data.preprocess), config=recovery_train_config(cfg),
        progress=progress)
    for h in handles:
        h.remove()
    net.cpu().eval()
    after = sparsity_report(net)["sparsity"]
    if after < before - 1e-6:  # an invariant, not a tolerance: zeros must stay zeros
        raise RuntimeError(f"recovery lost sparsity: {before:.6f} -> {after:.6f}")
    top1 = evaluate(net, *to_tensor(data.holdout, data.preprocess))
    save_checkpoint(out / "recovered.pt", state_dict=net.state_dict(), meta=meta)
    return {"checkpoint": "recovered.pt", "top1": top1, "sparsity": after}
