"""Drift checkpoints: DriftNet weights + everything needed to use them, as tensors and JSON.

meta = {"kind": "edgeflow-drift", "drift_config": {...}, "theta_layout": [...],
        "integrator": {"method", "steps", "dt"}, "metric": "cosine",
        "backbone": {checkpoint meta of the backbone: model, model_kwargs, preprocess, ...}, ...}
theta0 is stored as a tensor (``theta0`` key) beside the drift weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from edgeflow.adapt.apply import IntegratorSettings
from edgeflow.adapt.drift import DriftConfig, DriftNet
from edgeflow.adapt.theta import ThetaSpec
from edgeflow.checkpoint import load_checkpoint, save_checkpoint
from edgeflow.errors import CheckpointError

KIND = "edgeflow-drift"


def save_drift(path: str | Path, *, drift: DriftNet, spec: ThetaSpec, theta0: torch.Tensor,
               settings: IntegratorSettings, metric: str = "cosine",
               backbone_meta: dict | None = None, **extra: Any) -> Path:
    """Write a drift checkpoint atomically."""
    sd = {f"drift.{k}": v for k, v in drift.state_dict().items()}
    sd["theta0"] = theta0.detach().cpu()
    meta = {"kind": KIND, "drift_config": drift.config.to_dict(), "theta_layout": spec.layout(),
            "integrator": settings.to_dict(), "metric": metric, "backbone": backbone_meta or {},
            **extra}
    return save_checkpoint(path, state_dict=sd, meta=meta)


def load_drift(path: str | Path) -> tuple[DriftNet, ThetaSpec, torch.Tensor, IntegratorSettings,
                                          dict]:
    """(drift in eval mode, theta spec, theta0, integrator settings, meta) of a drift checkpoint."""
    sd, meta = load_checkpoint(path)
    if meta.get("kind") != KIND:
        raise CheckpointError(f"{path} is not a drift checkpoint (kind {meta.get('kind')!r}); "
                              "make one with `edgeflow meta-train`")
    drift = DriftNet(DriftConfig(**meta["drift_config"]))
    drift.load_state_dict({k.removeprefix("drift."): v for k, v in sd.items()
                           if k.startswith("drift.")})
    spec = ThetaSpec.from_layout(meta["theta_layout"])
    return drift.eval(), spec, sd["theta0"], IntegratorSettings(**meta["integrator"]), meta
