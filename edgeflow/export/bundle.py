"""``export_bundle``: a backbone (+ optional drift) -> a verified, atomically written bundle.

Takes any ``nn.Module`` that :func:`edgeflow.adapt.features_with_theta` accepts (a zoo model, or
the plain dense module the pruning stage's ``finalize``/``load_pruned`` returns), so the caller
decides how the model was built. Every export runs ``onnx.checker`` and the parity checks against
PyTorch on real images; a failed check raises and leaves any previous bundle in place.
"""

from __future__ import annotations

import datetime as _dt
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeflow import __version__
from edgeflow.adapt import DriftNet, IntegratorSettings, ThetaSpec, features_with_theta, prototypes
from edgeflow.adapt.apply import METRICS
from edgeflow.data import Preprocess, preprocess
from edgeflow.errors import ConfigError, DataError, unknown_name
from edgeflow.export.onnx_graphs import (
    backbone_parity,
    check_theta_spec,
    drift_parity,
    export_backbone,
    export_drift,
    graph_io,
)
from edgeflow.export.onnx_split import PREFIX_FILE, SUFFIX_FILE, split_backbone, split_parity
from edgeflow.runtime.bundle import METRIC_SCALE, BundleWriter, load_bundle


def weight_sparsity(model: nn.Module) -> dict[str, Any]:
    """Fraction of zero conv weights in ``model.features`` and whether every conv is 2:4 sparse."""
    total = zeros = 0
    two_four = True
    per_layer = {}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            w = mod.weight.detach()
            n, z = w.numel(), int((w == 0).sum())
            total, zeros = total + n, zeros + z
            per_layer[name] = round(z / n, 6)
            cin = w.shape[1]
            if cin % 4:
                two_four = False
            else:  # groups of 4 consecutive input channels at each kernel position
                g = w.permute(0, 2, 3, 1).reshape(-1, 4)
                two_four = two_four and bool(((g == 0).sum(1) >= 2).all())
    return {"conv_weights": total, "zeros": zeros, "fraction": zeros / max(1, total),
            "two_four": two_four and total > 0, "per_layer": per_layer}


def export_bundle(model: nn.Module, *, output: str | Path, preprocess_spec: Preprocess,
                  parity_images: np.ndarray, spec: ThetaSpec | None = None,
                  theta0: torch.Tensor | None = None, drift: DriftNet | None = None,
                  settings: IntegratorSettings | None = None, metric: str = "cosine",
                  max_theta: int = 1024, allow_resize: bool = True,
                  source: dict[str, Any] | None = None, target: str | None = None,
                  sparsity: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
                  on_file: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Export ``model`` (and ``drift``) into the bundle directory ``output``; return the manifest.

    ``parity_images`` are real uint8 (N, H, W, C) images (a few dozen suffice) for the parity check.
    Without ``drift`` the bundle adapts by prototypes at theta0 only, and the manifest says so.

    Example::

        model = create_model("resnet20", weights="cifar10-resnet20-12fca82f.th").eval()
        ds = load_dataset("cifar10/test.zip", limit=32)
        export_bundle(model, output="r20.bundle", preprocess_spec=Preprocess(size=32),
                      parity_images=ds.images)
    """
    if metric not in METRICS:
        raise unknown_name("metric", metric, METRICS)
    model = model.eval().float()
    if drift is not None:
        if spec is None:
            raise ConfigError("a drift needs the ThetaSpec it was trained with (spec=...)")
        if drift.config.theta_dim != spec.size:
            raise ConfigError(f"drift expects theta of {drift.config.theta_dim} entries but the spec "
                              f"has {spec.size}")
    spec = spec or ThetaSpec.from_model(model, max_size=max_theta)
    check_theta_spec(model, spec)
    model_theta0 = spec.get(model)
    if theta0 is None:
        theta0 = model_theta0
    elif theta0.shape != model_theta0.shape or not torch.allclose(theta0, model_theta0, atol=1e-6):
        raise ConfigError("the drift's theta0 is not the backbone's theta: the drift was trained "
                          "for other weights; export the backbone it was trained with")
    settings = settings or IntegratorSettings()
    images = np.asarray(parity_images)
    if images.ndim not in (3, 4) or images.dtype != np.uint8 or len(images) == 0:
        raise DataError(f"parity_images must be real uint8 images (N, H, W[, C]), got "
                        f"{images.dtype} {images.shape}")
    x = preprocess(images, preprocess_spec)
    feat_dim = None

    with BundleWriter(output, on_file=on_file) as w:
        export_backbone(model, spec, w.path("backbone.onnx"), size=preprocess_spec.size,
                        channels=preprocess_spec.channels)
        w.file_written("backbone.onnx")
        parity = {"backbone": backbone_parity(model, spec, w.path("backbone.onnx"), x)}
        np.save(w.path("theta0.npy"), theta0.detach().cpu().numpy().astype(np.float32))
        w.file_written("theta0.npy")
        graphs = {"backbone": {"file": "backbone.onnx", **graph_io(w.path("backbone.onnx"))}}
        # the backbone cut at theta: the device runs the prefix over a support set once and every
        # further look at it (adapted prototypes, a task that grows) is a suffix pass
        split_backbone(w.path("backbone.onnx"), w.path(PREFIX_FILE), w.path(SUFFIX_FILE))
        for name, file in (("backbone_prefix", PREFIX_FILE), ("backbone_suffix", SUFFIX_FILE)):
            w.file_written(file)
            graphs[name] = {"file": file, **graph_io(w.path(file))}
        parity["split"] = split_parity(w.path("backbone.onnx"), w.path(PREFIX_FILE),
                                       w.path(SUFFIX_FILE), x,
                                       theta0.detach().cpu().numpy())
        feat_dim = graphs["backbone"]["outputs"][0]["shape"][1]
        if drift is not None:
            if drift.config.feature_dim != feat_dim:
                raise ConfigError(f"drift expects {drift.config.feature_dim}-d features but the "
                                  f"backbone gives {feat_dim}")
            export_drift(drift, w.tmp)
            w.file_written("task_encoder.onnx")
            w.file_written("drift.onnx")
            with torch.no_grad():
                n = min(len(x), 25)
                lab = torch.arange(n) % 5
                feats = features_with_theta(model, torch.from_numpy(x[:n]), theta0, spec)
                protos = prototypes(feats, lab, int(lab.max()) + 1).numpy()
            parity["drift"] = drift_parity(drift, w.tmp, protos, theta0.numpy(),
                                           shots=feats.numpy(), shot_labels=lab.numpy())
            for g in ("task_encoder", "drift"):
                graphs[g] = {"file": f"{g}.onnx", **graph_io(w.tmp / f"{g}.onnx")}
        manifest = {
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "edgeflow_version": __version__,
            "exported_with": {"torch": torch.__version__, "python": platform.python_version()},
            "graphs": graphs,
            "precisions": {"fp32": "backbone.onnx"},
            "preprocess": preprocess_spec.to_dict(),
            "input": {"layout": "uint8 NHWC images -> preprocess -> float32 NCHW",
                      "allow_resize": bool(allow_resize)},
            "theta": {"size": spec.size, "layout": spec.layout(), "file": "theta0.npy",
                      "feature_dim": feat_dim},
            "adaptation": {"drift": drift is not None,
                           "mode": ("hyperflow" if drift is not None else
                                    "recenter" if settings.recenter else "prototypes-at-theta0"),
                           "integrator": settings.to_dict(), "metric": metric,
                           "scale": METRIC_SCALE,
                           "drift_config": drift.config.to_dict() if drift is not None else None},
            "source": source or {"model": type(model).__name__},
            "sparsity": {**weight_sparsity(model), **(sparsity or {})},
            "target": target,
            "metrics": {**(metrics or {}), "parity": parity},
        }
        w.commit(manifest)
    return load_bundle(output).manifest
