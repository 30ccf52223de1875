"""Bundles from real weights and images, built once per test session (shared by export/runtime tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.conftest import shared_file

CIFAR_PRE = {"size": 32, "channels": 3}  # Idelbayev trained with ImageNet mean/std (the default)
_CACHE: dict[str, object] = {}


def cifar_test(limit: int = 1000):
    """A class-balanced slice of the real CIFAR-10 test set (JPEG), decoded once."""
    key = f"cifar{limit}"
    if key not in _CACHE:
        from edgeflow.data import load_dataset

        _CACHE[key] = load_dataset(shared_file("data/cifar10/test.zip"), limit=limit)
    return _CACHE[key]


def resnet20():
    """The pretrained CIFAR ResNet-20 in eval mode."""
    from edgeflow.models import create_model

    return create_model("resnet20", weights=shared_file("weights/cifar10-resnet20-12fca82f.th")).eval()


def small_drift(spec, *, feature_dim: int = 64, seed: int = 0, std: float = 0.02):
    """A DriftNet whose output layer is random (not zero), so adaptation moves theta noticeably."""
    import torch

    from edgeflow.adapt import DriftConfig, DriftNet

    torch.manual_seed(seed)
    drift = DriftNet(DriftConfig(theta_dim=spec.size, feature_dim=feature_dim, hidden=64, task_dim=32,
                                 heads=4, encoder_layers=1, blocks=2))
    torch.nn.init.normal_(drift.velocity_net.out.weight, std=std)
    torch.nn.init.normal_(drift.velocity_net.out.bias, std=std)
    return drift.eval()


def build_bundle(root: Path, *, drift: bool = True, name: str | None = None):
    """(bundle path, model, spec, drift, settings) for ResNet-20 (+ a random drift), cached."""
    name = name or ("r20-drift" if drift else "r20-nodrift")
    if name in _CACHE:
        return _CACHE[name]
    from edgeflow.adapt import IntegratorSettings, ThetaSpec
    from edgeflow.data import Preprocess
    from edgeflow.export import export_bundle

    model = resnet20()
    spec = ThetaSpec.from_model(model, max_size=512)
    d = small_drift(spec) if drift else None
    # with re-centring, so the runtime-vs-PyTorch tests also cover its move
    settings = IntegratorSettings(method="euler", steps=5, recenter=0.5 if drift else 0.0)
    out = root / name
    export_bundle(model, output=out, preprocess_spec=Preprocess(**CIFAR_PRE),
                  parity_images=cifar_test().images[:48], spec=spec, drift=d, settings=settings,
                  source={"model": "resnet20", "weights": "cifar10-resnet20-12fca82f.th"},
                  target="cpu", metrics={"note": "test bundle"})
    _CACHE[name] = (out, model, spec, d, settings)
    return _CACHE[name]


def episode(seed_index: int, *, ways: int = 5, shots: int = 5, queries: int = 15):
    from edgeflow.data import EpisodeSampler

    ds = cifar_test()
    ep = EpisodeSampler(ds.labels, ways=ways, shots=shots, queries=queries, seed=7).episode(seed_index)
    return (ds.images[ep.support], ep.support_labels, ds.images[ep.query], ep.query_labels)


def as_float(images: np.ndarray) -> np.ndarray:
    from edgeflow.data import Preprocess, preprocess

    return preprocess(images, Preprocess(**CIFAR_PRE))


def tiny_manifest(writer, theta: np.ndarray) -> dict:
    """A valid manifest for a hand-made bundle: ``theta0.npy`` = ``theta`` and a placeholder
    ``backbone.onnx`` (for tests of the writer and the manifest, not of inference)."""
    np.save(writer.path("theta0.npy"), theta.astype(np.float32))
    writer.path("backbone.onnx").write_bytes(b"not a real graph")
    n = len(theta)
    tensor = {"name": "images", "shape": ["N", 3, 32, 32], "dtype": "float32"}
    return {"graphs": {"backbone": {"file": "backbone.onnx",
                                    "inputs": [tensor, {"name": "theta", "shape": [n],
                                                        "dtype": "float32"}],
                                    "outputs": [{"name": "features", "shape": ["N", 8],
                                                 "dtype": "float32"}]}},
            "precisions": {"fp32": "backbone.onnx"},
            "preprocess": {"size": 32, "channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3},
            "theta": {"size": n, "file": "theta0.npy", "layout": [{"name": "b", "offset": 0,
                                                                   "size": n}]},
            "adaptation": {"drift": False, "mode": "prototypes-at-theta0", "metric": "cosine",
                           "integrator": {"method": "euler", "steps": 0, "dt": None,
                                          "recenter": 0.0}}}
