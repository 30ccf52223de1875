"""``prune_model``: the whole ``edgeflow prune`` command as a function (data in, checkpoint out)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeflow.errors import ConfigError


def prune_model(*, model: str, data: str, sparsity: float, granularity: str, output: Path,
                method: str = "hyperflows", epochs: int = 3, regrowth_epochs: int | None = None,
                weights: Path | None = None, val_data: str | None = None, limit: int | None = None,
                val_limit: int | None = None, split: str | None = None, size: int | None = None,
                exclude: tuple[str, ...] = (), progress: bool = False,
                model_kwargs: dict | None = None, **options: Any) -> dict[str, Any]:
    """Prune ``model`` on ``data``, finalize it, save it with metadata; return the metrics.

    ``regrowth_epochs`` defaults to ``epochs // 2`` (the spec's 100 + 60 ratio, rounded down).
    Extra ``options`` go to :class:`PruneConfig` (``lr``, ``ft_lr``, ``batch_size``, ``score_lr``,
    ``controller_every``, ``budget``, ``seed``, ``device``...). Under ``torchrun`` every rank
    prunes its share of each batch (DDP) and rank 0 alone writes ``output``.
    """
    import torch
    from torch import nn

    from edgeflow.data import load_dataset
    from edgeflow.models import create_model
    from edgeflow.prune.channel import count_macs
    from edgeflow.prune.config import PruneConfig
    from edgeflow.prune.finalize import finalize, save_pruned, sparsity_report
    from edgeflow.prune.hyperflows import prune
    from edgeflow.train import evaluate, resolve_device, to_tensor
    from edgeflow.workflows import checkpoint_meta, preprocess_for

    config = PruneConfig(sparsity=sparsity, granularity=granularity, method=method, epochs=epochs,
                         regrowth_epochs=epochs // 2 if regrowth_epochs is None else regrowth_epochs,
                         exclude=tuple(exclude), **options)
    ds = load_dataset(data, split=split, limit=limit, progress=progress)
    if model_kwargs is None and weights is not None and ":" in model:
        # your own model: its head and probe size as `edgeflow train` recorded them
        from edgeflow.checkpoint import load_checkpoint

        model_kwargs = load_checkpoint(weights)[1].get("model_kwargs") or None
    torch.manual_seed(config.seed)  # initial weights when no --weights: reproducible
    net = create_model(model, num_classes=ds.num_classes, **(model_kwargs or {}))
    meta = None
    if weights is not None:
        from edgeflow.checkpoint import load_weights

        meta = load_weights(net, weights)
    h, w, _ = ds.image_shape
    spec = preprocess_for(net, meta, size or (h if h == w else None))
    val = None
    if val_data is not None:
        vds = load_dataset(val_data, split=split, limit=val_limit, progress=progress)
        if vds.classes != ds.classes:
            raise ConfigError(f"--val-data has classes {list(vds.classes[:4])}... but --data has "
                              f"{list(ds.classes[:4])}...; both need the same class folders")
        val = to_tensor(vds, spec)
    reference = {n: m.weight.numel() for n, m in net.named_modules()
                 if isinstance(m, (nn.Conv2d, nn.Linear))}
    dense_macs = count_macs(net)
    result = prune(net, to_tensor(ds, spec), config=config, progress=progress)
    plain = finalize(net).cpu().eval()
    report = sparsity_report(plain, reference)
    out: dict[str, Any] = {
        "output": str(output), "model": model, "method": method, "granularity": granularity,
        "requested_sparsity": sparsity, "sparsity": report["sparsity"],
        "nonzero_weights": report["nonzero"], "total_weights": report["total"],
        "macs": count_macs(plain), "dense_macs": dense_macs, "epochs": config.epochs,
        "regrowth_epochs": config.regrowth_epochs, "score_lr": result.score_lr,
        "controller_release": config.release if method == "hyperflows" else None,
        "seconds": result.seconds, "layers": report["density"], "history": result.history}
    if val is not None:
        dev = resolve_device(config.device)
        out["top1"] = evaluate(plain.to(dev), *val, device=dev)
        plain.cpu()
    prune_meta = {"method": method, "granularity": granularity, "sparsity": report["sparsity"],
                  "requested_sparsity": sparsity, "epochs": config.epochs,
                  "regrowth_epochs": config.regrowth_epochs, "data": str(data)}
    from edgeflow import distributed

    out["world_size"] = distributed.info().world_size
    if distributed.info().enabled:
        out["ranks_agree"] = distributed.replicas_agree(plain)
    if distributed.info().is_main:  # one writer; every rank holds the same pruned model
        save_pruned(output, plain, meta=checkpoint_meta(model, plain, ds.classes, spec, model_kwargs,
                                                        prune=prune_meta))
    distributed.barrier()
    return out
