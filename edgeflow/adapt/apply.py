"""HyperFlow at inference, in PyTorch: the reference the torch-free runtime must reproduce.

adapt: prototypes at theta0 -> task embedding z (once) -> integrate the drift for ``steps`` ->
theta_S. classify: prototypes of the support set at theta_S, queries by nearest prototype.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from edgeflow.adapt.drift import DriftNet
from edgeflow.adapt.theta import ThetaSpec, features_with_theta, prototypes
from edgeflow.errors import ConfigError, unknown_name
from edgeflow.integrate import STEPPERS
from edgeflow.models import Backbone

METRICS = ("cosine", "euclidean")


@dataclass(frozen=True)
class IntegratorSettings:
    """How the device adapts theta: ``steps`` of ``dt`` (default 1/steps) with ``method``, plus
    the re-centring move of strength ``recenter`` (alpha, :mod:`edgeflow.adapt.recenter`; 0: off).

    The two moves add: theta_S = integral of the drift from theta0 + alpha's re-centring move,
    both computed from the support pass at theta0. (Starting the drift at the re-centred theta
    instead puts it off its training distribution: -2.4 points on val tasks.) A drift trained on
    trajectories from re-centred starts (``TrajectoryConfig.recenter``) has learnt, in these same
    coordinates, what fine-tuning adds after the re-centring move.
    """

    method: str = "euler"
    steps: int = 10
    dt: float | None = None
    recenter: float = 0.0
    # closed loop: every ``loop_every`` steps the support set is seen again at the current theta
    # (prototypes, and statistics for a drift that reads them); 0 = open loop (the paper's)
    loop_every: int = 0
    # the forward-only guard's "re-centring alone" candidate (edgeflow.adapt.guard): its strength
    # when the settings' own ``recenter`` is 0 (an outcome drift re-centres inside itself, with a
    # learned gain, so its settings have none); the compile stores val's best alpha at 0 steps
    guard_recenter: float = 0.0

    @property
    def guard_alpha(self) -> float:
        """The strength of the guard's re-centring-alone candidate (0: no such candidate)."""
        return self.recenter or self.guard_recenter

    def __post_init__(self) -> None:
        if self.method not in STEPPERS:
            raise unknown_name("integrator", self.method, list(STEPPERS))
        for name in ("recenter", "guard_recenter"):
            if not 0.0 <= getattr(self, name) <= 2.0:
                raise ConfigError(f"{name} (alpha) must be in [0, 2], got {getattr(self, name)}")
        if self.loop_every < 0:
            raise ConfigError(f"loop_every must be >= 0 (0: open loop), got {self.loop_every}")

    def to_dict(self) -> dict:
        return asdict(self)


def prototype_logits(query: torch.Tensor, protos: torch.Tensor, *, metric: str = "cosine",
                     scale: float = 10.0) -> torch.Tensor:
    """Scores (Q, ways): scaled cosine similarity, or negative squared Euclidean distance."""
    if metric == "cosine":
        return scale * F.normalize(query, dim=-1) @ F.normalize(protos, dim=-1).T
    if metric == "euclidean":
        return -torch.cdist(query, protos).pow(2)
    raise unknown_name("metric", metric, METRICS)


@torch.no_grad()
def hyperflow_adapt(model: Backbone, spec: ThetaSpec, drift: DriftNet, support_x: torch.Tensor,
                    support_y: torch.Tensor, ways: int, *, settings: IntegratorSettings,
                    theta0: torch.Tensor | None = None) -> torch.Tensor:
    """theta after integrating the drift conditioned on the support set (open or closed loop),
    plus the re-centring move when ``settings.recenter`` > 0 (no gradients anywhere)."""
    from edgeflow.adapt.loop import drift_theta
    from edgeflow.adapt.split import SplitFeatures

    theta0 = spec.get(model) if theta0 is None else theta0
    split = SplitFeatures(model, spec)
    return drift_theta(split, drift, split.prefix(support_x), support_y, ways, theta0,
                       settings=settings)


@torch.no_grad()
def classify(model: Backbone, spec: ThetaSpec, theta: torch.Tensor, support_x: torch.Tensor,
             support_y: torch.Tensor, query_x: torch.Tensor, ways: int, *,
             metric: str = "cosine") -> torch.Tensor:
    """Query logits (Q, ways) of the prototype classifier at ``theta``."""
    protos = prototypes(features_with_theta(model, support_x, theta, spec), support_y, ways)
    return prototype_logits(features_with_theta(model, query_x, theta, spec), protos, metric=metric)
