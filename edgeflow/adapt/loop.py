"""The drift's adaptation procedure in PyTorch, open or closed loop: one definition for
meta-training (with gradients), validation, evaluation and the reference the device reproduces.

From one suffix pass over the support set at theta0: prototypes (and, for an encoder with
``shot_tokens``, the shots) -> z (and, for a drift that reads them, the support statistics of
:mod:`edgeflow.adapt.signals`); integrate the drift. Closed loop (``settings.loop_every`` = r > 0):
every r Euler steps the support set is passed through the suffix again at the current theta and z
and the statistics are refreshed, so the drift sees what its own steps did. r = 0 is the paper's
open loop. The legacy re-centring move (``settings.recenter``, from the theta0 pass) is added to
every point of the path.

What the drift is fed is a constant of the task (computed without gradients); the drift's weights
(task encoder and velocity) get gradients through every Euler step when the caller enables them.
"""

from __future__ import annotations

import torch

from edgeflow.adapt.apply import IntegratorSettings
from edgeflow.adapt.drift import DriftNet
from edgeflow.adapt.recenter import recenter_move, support_pass
from edgeflow.adapt.signals import support_stats
from edgeflow.adapt.split import Cache, SplitFeatures
from edgeflow.integrate import integrate


def drift_path(split: SplitFeatures, drift: DriftNet | None, cache: Cache, labels: torch.Tensor,
               ways: int, theta0: torch.Tensor, *, settings: IntegratorSettings,
               first: tuple[torch.Tensor, torch.Tensor | None] | None = None
               ) -> list[torch.Tensor]:
    """[theta0, theta_1, ..., theta_S] (each (P,)) of the drift on one support set, each plus the
    re-centring move when ``settings.recenter`` > 0. ``first``: the (features, means) of the
    support pass at theta0 when the caller has it."""
    uses_stats = drift is not None and drift.uses_stats
    if first is None:
        first = support_pass(split, cache, theta0, means=uses_stats or settings.recenter > 0)
    feats, means = first
    move = (recenter_move(theta0, means.mean(0), alpha=settings.recenter)
            if settings.recenter else torch.zeros_like(theta0))
    steps = settings.steps
    dt = settings.dt if settings.dt is not None else 1.0 / max(1, steps)
    every = settings.loop_every or max(1, steps)
    theta, path, k = theta0, [theta0], 0
    while k < steps:
        if k:  # closed loop: see the support set again at the current theta
            with torch.no_grad():
                feats, means = support_pass(split, cache, theta.detach(), means=uses_stats)
        z = drift.embed_support(feats, labels, ways)
        stats = (support_stats(feats, means, labels, ways, theta.detach())[None].to(theta0.device)
                 if uses_stats else None)
        n = min(every, steps - k)
        seg = integrate(lambda t, th, z=z, s=stats: drift.velocity(th, t, z, s), theta[None],
                        steps=n, dt=dt, t0=k * dt, method=settings.method, return_path=True)
        path += [p[0] for p in seg[1:]]
        theta, k = seg[-1][0], k + n
    return [p + move for p in path]


def drift_theta(split: SplitFeatures, drift: DriftNet | None, cache: Cache, labels: torch.Tensor,
                ways: int, theta0: torch.Tensor, *, settings: IntegratorSettings,
                first: tuple[torch.Tensor, torch.Tensor | None] | None = None) -> torch.Tensor:
    """The end of :func:`drift_path`: theta after ``settings.steps`` steps (theta0 plus the
    re-centring move at 0 steps)."""
    return drift_path(split, drift, cache, labels, ways, theta0, settings=settings, first=first)[-1]
