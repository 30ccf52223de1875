"""Compile stages that make the deployable artefacts: bundle, INT8 variant, TensorRT engines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeflow.pipeline.config import CompileConfig
from edgeflow.pipeline.model_stages import CompileData


def export_stage(cfg: CompileConfig, data: CompileData, backbone_ckpt: Path, drift_ckpt: Path | None,
                 bundle: Path, *, metrics: dict[str, Any]) -> dict[str, Any]:
    """Export the backbone (and drift) into ``bundle``, atomically, with parity checks."""
    from edgeflow.checkpoint import load_checkpoint
    from edgeflow.export import export_bundle
    from edgeflow.prune.finalize import load_pruned

    net = load_pruned(backbone_ckpt)
    _, meta = load_checkpoint(backbone_ckpt)
    drift = spec = theta0 = settings = None
    metric = "cosine"
    if drift_ckpt is not None:
        from edgeflow.adapt.io import load_drift

        drift, spec, theta0, settings, dmeta = load_drift(drift_ckpt)
        metric = dmeta.get("metric", metric)
    prune = meta.get("prune", {})
    manifest = export_bundle(
        net, output=bundle, preprocess_spec=data.preprocess, parity_images=data.holdout.images[:32],
        spec=spec, theta0=theta0, drift=drift, settings=settings, metric=metric,
        max_theta=cfg.adapt.theta_max,
        source={"model": meta["model"], "model_kwargs": meta.get("model_kwargs", {}),
                "data": cfg.data.base, "base_classes": list(data.train.classes),
                "edgeflow_compile": cfg.to_dict()},
        target=cfg.export.target,
        sparsity={"method": prune.get("method"), "granularity": prune.get("granularity"),
                  "requested": prune.get("requested_sparsity"),
                  **(unpruned_reference(meta, data, cfg) if prune else {})},
        metrics=metrics)
    return {"bundle": str(bundle), "parity": manifest["metrics"]["parity"],
            "sparsity": manifest["sparsity"].get("sparsity")}


def unpruned_reference(meta: dict[str, Any], data: CompileData, cfg: CompileConfig) -> dict[str, Any]:
    """Parameters, MACs and layer widths of the *unpruned* architecture's backbone graph, counted
    exactly as ``edgeflow inspect`` counts the bundle's (the same export, the same graph reader),
    so a channel-pruned bundle can say "X of Y"."""
    import tempfile

    from edgeflow.adapt import ThetaSpec
    from edgeflow.export.onnx_graphs import export_backbone
    from edgeflow.models import create_model
    from edgeflow.runtime.graph_stats import graph_structure

    dense = create_model(meta["model"], num_classes=meta["num_classes"],
                         **meta.get("model_kwargs", {})).eval()
    spec = ThetaSpec.from_model(dense, max_size=cfg.adapt.theta_max)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dense.onnx"
        export_backbone(dense, spec, path, size=data.preprocess.size,
                        channels=data.preprocess.channels)
        st = graph_structure(path)
    return {"dense_params": st["params"], "dense_macs": st["macs_per_image"],
            "dense_widths": {x["layer"]: x["width"] for x in st["layers"]}}


def wants_int8(cfg: CompileConfig) -> bool:
    from edgeflow.errors import ConfigError
    from edgeflow.targets import Target

    choice = cfg.export.int8.lower()
    if choice not in ("auto", "yes", "no"):
        raise ConfigError(f"export.int8 must be auto, yes or no, got {cfg.export.int8!r}")
    if choice != "auto":
        return choice == "yes"
    return "int8" in Target.load(cfg.export.target).precisions


def calibrate_stage(cfg: CompileConfig, data: CompileData, bundle: Path, out: Path) -> dict[str, Any]:
    """Quantise the bundle's backbone to QDQ INT8 on a stratified base-class sample; add it to the
    bundle (atomically) as the ``int8`` precision, and record its agreement with FP32."""
    from edgeflow.calibration import calibration_indices
    from edgeflow.data import preprocess
    from edgeflow.export.int8 import quantize_onnx_int8
    from edgeflow.export.int8_trt import TENSORRT_MANIFEST, bundle_tensorrt_int8
    from edgeflow.runtime import Session
    from edgeflow.runtime.bundle import load_bundle, update_bundle

    b = load_bundle(bundle)
    theta0 = b.theta0()
    idx = calibration_indices(data.train.labels, samples=cfg.export.calibration_samples,
                              seed=cfg.seed)
    sample = preprocess(data.train.images[idx], data.preprocess)
    np.save(out / "calibration_sample.npy", sample)
    int8 = out / "backbone.int8.onnx"
    quantize_onnx_int8(bundle / "backbone.onnx", int8, sample=sample,
                       extra_inputs={"theta": theta0})
    # TensorRT cannot parse ONNX Runtime's INT8 graph: its own Q/DQ form goes in beside it
    trt_int8 = bundle_tensorrt_int8(bundle, out, sample=sample)
    update_bundle(bundle, add={"backbone.int8.onnx": int8, "calibration_sample.npy":
                               out / "calibration_sample.npy", **trt_int8},
                  precisions={"int8": "backbone.int8.onnx"}, manifest=TENSORRT_MANIFEST)
    # agreement of INT8 with FP32 features on held-out base images (nearest-prototype labels)
    x = data.holdout.images[:256]
    with Session(bundle, backend="onnxruntime", precision="fp32") as s32, \
            Session(bundle, backend="onnxruntime", precision="int8") as s8:
        f32 = s32.features(s32.prepare(x), s32.theta0)
        f8 = s8.features(s8.prepare(x), s8.theta0)
    cos = float(np.mean(np.sum(f32 * f8, 1) / (np.linalg.norm(f32, axis=1) *
                                               np.linalg.norm(f8, axis=1) + 1e-12)))
    return {"int8": "backbone.int8.onnx", "tensorrt_int8": "backbone.int8.trt.onnx",
            "samples": len(idx), "feature_cosine": cos}


def engines_stage(cfg: CompileConfig, bundle: Path) -> dict[str, Any]:
    """TensorRT engines when TensorRT is installed and the target has a GPU; else say why not."""
    from edgeflow.runtime.backends import tensorrt_available
    from edgeflow.targets import Target

    target = Target.load(cfg.export.target)
    if not target.has_gpu:
        return {"built": False, "gpu": False, "reason": f"target {target.name} has no GPU"}
    missing = tensorrt_available()
    if missing:  # the usual case on a workstation compiling for a Jetson: built on the device
        return {"built": False, "gpu": True, "reason": missing}
    from edgeflow.runtime import Session, load_bundle  # pragma: no cover - needs TensorRT + GPU
    from edgeflow.runtime.trt_build import BuildOptions

    # TensorRT builds FP16 from the FP32 graph, so fp16 is available wherever fp32 is
    precision = target.pick_precision([*load_bundle(bundle).manifest["precisions"], "fp16"])
    options = BuildOptions.from_target(target, precision=precision)
    with Session(bundle, backend="tensorrt", precision=precision, build_options=options) as s:
        return {"built": s.backend == "tensorrt", "gpu": True, "reason": s.fallback_reason or "",
                "precision": s.precision}


def note_unbuilt_engines(cfg: CompileConfig, checks: list[dict[str, Any]],
                         engines: dict[str, Any]) -> list[dict[str, Any]]:
    """The target checks, with the 2:4 one saying that no engine exists yet when none was built.

    ``check_sparsity`` speaks of "the engine" because it is also what ``edgeflow build`` checks on
    the device; in a compile that built none, that reads as if an engine existed.
    """
    if engines.get("built") or not engines.get("gpu", True):
        return checks
    from edgeflow.targets import Target

    target = Target.load(cfg.export.target)
    out = []
    for c in checks:
        if c["name"] == "sparsity" and c["ok"] and "SPARSE_WEIGHTS" in c["message"]:
            c = {**c, "message": f"{target.name} has sparse tensor cores (SM {target.gpu_sm}); no "
                 "engine was built here: `edgeflow build BUNDLE --target "
                 f"{cfg.export.target}` on the device builds one with SPARSE_WEIGHTS"}
        out.append(c)
    return out
