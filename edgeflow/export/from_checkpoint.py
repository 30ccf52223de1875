"""Export from files: a backbone checkpoint (+ a drift checkpoint) -> a bundle. The CLI's workhorse.

The backbone is rebuilt from the checkpoint's metadata (model name, model_kwargs, preprocess) via
:func:`edgeflow.models.create_model`; ``load_model`` may be swapped for another loader (e.g. the
pruning stage's ``load_pruned`` for physically smaller channel-pruned models).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from edgeflow.errors import ConfigError, DataError


def load_backbone(weights: str | Path, *, model: str | None = None) -> tuple[nn.Module, str, dict]:
    """(model in eval mode, model name, checkpoint meta) of a backbone checkpoint."""
    from edgeflow.checkpoint import load_checkpoint
    from edgeflow.models import create_model

    sd, meta = load_checkpoint(weights)
    name = model or meta.get("model")
    if name is None:
        raise ConfigError(f"{weights} does not record its model; pass --model (e.g. resnet20)")
    if (meta.get("prune") or {}).get("channels") and name == meta.get("model"):
        # channel pruning made the layers narrower than the model's defaults; the checkpoint
        # records the widths (edgeflow compile's stages/recover/recovered.pt, edgeflow prune's)
        from edgeflow.prune.finalize import load_pruned

        return load_pruned(weights), name, meta
    head = next((v for k, v in sd.items() if k.split(".")[0] in ("linear", "classifier")
                 and k.endswith("weight")), None)
    num_classes = int(head.shape[0]) if head is not None else int(meta.get("num_classes", 10))
    net = create_model(name, num_classes=num_classes, weights=weights, **meta.get("model_kwargs", {}))
    return net.eval(), name, meta


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def export_from_checkpoint(*, weights: str | Path, output: str | Path, model: str | None = None,
                           drift: str | Path | None = None, target: str | None = None,
                           size: int | None = None, parity_data: str | Path | None = None,
                           parity_images: int = 32, max_theta: int = 1024,
                           allow_resize: bool = True,
                           load_model: Callable[..., tuple[nn.Module, str, dict]] = load_backbone,
                           ) -> dict[str, Any]:
    """Export ``weights`` (+ ``drift``) to the bundle ``output``; return a summary dict.

    Parity images come from ``parity_data`` (a dataset path), else from the data the checkpoint
    was trained on when its metadata records it.
    """
    from edgeflow.adapt import load_drift
    from edgeflow.data import load_dataset
    from edgeflow.export.bundle import export_bundle
    from edgeflow.workflows import preprocess_for

    weights = Path(weights)
    net, name, meta = load_model(weights, model=model)
    kwargs: dict[str, Any] = {}
    source: dict[str, Any] = {"model": name, "model_kwargs": meta.get("model_kwargs", {}),
                              "weights": weights.name, "weights_sha256": _sha256(weights),
                              "train": meta.get("train")}
    pre_meta = meta
    if drift is not None:
        d, spec, theta0, settings, dmeta = load_drift(drift)
        kwargs.update(drift=d, spec=spec, theta0=theta0, settings=settings,
                      metric=dmeta.get("metric", "cosine"))
        source.update(drift=Path(drift).name, drift_sha256=_sha256(Path(drift)),
                      drift_meta={k: v for k, v in dmeta.items()
                                  if k not in ("backbone", "theta_layout", "drift_config")})
        if dmeta.get("backbone", {}).get("preprocess") and "preprocess" not in meta:
            pre_meta = dmeta["backbone"]
    spec_pre = preprocess_for(net, pre_meta, size)
    data = parity_data or (meta.get("train") or {}).get("data")
    if data is None:
        raise DataError("the parity check needs real images: pass --parity-data (a dataset dir or "
                        ".zip, e.g. ../shared/data/cifar10/test.zip)")
    mode = "L" if spec_pre.channels == 1 else "RGB"
    ds = load_dataset(data, limit=parity_images, mode=mode, size=spec_pre.size)
    metrics = {k: meta[k] for k in ("val_top1", "top1", "metrics") if k in meta}
    prune = meta.get("prune") or {}
    sparsity = meta.get("sparsity") or ({"method": prune.get("method"),
                                         "granularity": prune.get("granularity"),
                                         "requested": prune.get("requested_sparsity")}
                                        if prune else None)
    manifest = export_bundle(net, output=output, preprocess_spec=spec_pre, parity_images=ds.images,
                             max_theta=max_theta, allow_resize=allow_resize, source=source,
                             target=target, sparsity=sparsity, metrics=metrics,
                             **kwargs)
    parity = manifest["metrics"]["parity"]
    return {"output": str(Path(output)), "model": name, "drift": drift is not None,
            "theta_size": manifest["theta"]["size"],
            "files": {k: v["bytes"] for k, v in manifest["files"].items()},
            "parity_backbone_max_abs_diff": max(parity["backbone"]["max_abs_diff_theta0"],
                                                parity["backbone"]["max_abs_diff_theta_moved"]),
            "parity_drift_max_abs_diff": (max(parity["drift"]["max_abs_diff_z"],
                                              parity["drift"]["max_abs_diff_velocity"])
                                          if "drift" in parity else None),
            "parity_images": parity["backbone"]["images"], "target": target}
