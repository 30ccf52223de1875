"""Can EdgeFlow use this model? Build it, say what was chosen, and try the export on it.

``check_model`` is what ``edgeflow compile`` runs first for a bring-your-own model (and what
``edgeflow model inspect`` prints): the head, the feature size, the BatchNorm layers and the theta
they give, the input size, and a trial export of the feature graph (theta as an input, BatchNorm
folded) checked against PyTorch on a batch of another size than the one traced. A model whose
forward does not trace, or traces to a graph that is only right for the traced input, fails here,
in seconds, instead of after training.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edgeflow.errors import ConfigError

EXPORT_FIX = ("EdgeFlow exports forward with torch.onnx (tracing): keep forward free of Python "
              "branches or loops on tensor values and of non-torch code")


@dataclass(frozen=True)
class ModelCheck:
    """What EdgeFlow chose for a model (``summary``) and the theta it gives at ``theta_max``."""

    summary: dict[str, Any]
    theta_layers: int
    theta_size: int
    theta_max: int
    exported: bool

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary, "theta_layers": self.theta_layers, "theta_size": self.theta_size,
                "theta_max": self.theta_max,
                "onnx_export": "ok" if self.exported else "not checked"}

    def lines(self) -> list[str]:
        """The human summary: one fact per line."""
        s = self.summary
        c, h, w = s["input"]
        return [f"model: {s['model']} ({s['params']:,} parameters)",
                f"head: {s['head']} (Linear {s['head_shape'][0]} -> {s['head_shape'][1]}), removed "
                f"for features",
                f"features: {s['feature_dim']}-d (the head's input)",
                f"BatchNorm: {s['batchnorm_layers']} layers, {s['batchnorm_biases']} biases",
                f"theta: the {self.theta_layers} BatchNorm layer"
                f"{'s' if self.theta_layers > 1 else ''} nearest the features, {self.theta_size} "
                f"values (theta_max {self.theta_max})",
                f"input: {c}x{h}x{w}",
                f"ONNX export: {'ok (checked against PyTorch)' if self.exported else 'not checked'}"]


def check_model(name: str, *, head: str = "", input_size: int = 32, in_channels: int = 3,
                theta_max: int = 64, weights: str | Path | None = None,
                export: bool = True) -> ModelCheck:
    """Build the user model ``name`` (``package.module:build``), describe it, try its export."""
    from edgeflow.adapt import ThetaSpec
    from edgeflow.models import MODELS, create_model, is_custom

    if not is_custom(name):
        what = "is a zoo model" if name in MODELS else "is not a package.module:build name"
        raise ConfigError(f"{name!r} {what}; `edgeflow model inspect` describes your own models: "
                          "give package.module:build, a callable that returns a torch.nn.Module "
                          "(e.g. my_models.nets:build)")
    model = create_model(name, num_classes=None, head=head, input_size=input_size,
                         in_channels=in_channels, weights=weights).eval()
    spec = ThetaSpec.from_model(model, max_size=theta_max)
    if export:
        try_export(model, spec, size=input_size, channels=in_channels)
    return ModelCheck(model.summary(), len(spec.names), spec.size, theta_max, export)


def try_export(model: torch.nn.Module, spec: Any, *, size: int, channels: int) -> None:
    """Export the feature graph to a temporary file and compare it with PyTorch on 3 images (the
    export traces 2); a ConfigError naming the problem and the fix when either fails."""
    from edgeflow.export.onnx_graphs import backbone_parity, export_backbone

    x = torch.rand(3, channels, size, size, generator=torch.Generator().manual_seed(1)).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "features.onnx"
        try:
            export_backbone(model, spec, path, size=size, channels=channels)
        except ConfigError:
            raise
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"the model's features do not export to ONNX ({type(exc).__name__}: "
                              f"{first[:300]}); {EXPORT_FIX}") from exc
        try:
            backbone_parity(model, spec, path, x)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"the model's features export to ONNX but the graph does not compute "
                              f"what PyTorch does on another batch ({first[:300]}); "
                              f"{EXPORT_FIX}") from exc
