"""The forward-only guard in PyTorch: the reference :mod:`edgeflow.runtime.guard` reproduces, and
what the evaluation harness and benchmarks run (method ``hyperflow-guard``).

Candidates: theta0, re-centring alone (when the settings re-centre), and the drift's path after k
of its Euler steps (open or closed loop, plus the re-centring move). Each is scored on the support
set alone by leave-one-out prototype accuracy, ties broken by the mean log-probability of the true
class; theta0 is kept unless a candidate is strictly better. Fewer than 2 shots in some class: no
leave-one-out, so the settings' own adaptation is returned (as the device does).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from edgeflow.adapt.apply import IntegratorSettings
from edgeflow.adapt.drift import DriftNet
from edgeflow.adapt.loop import drift_path
from edgeflow.adapt.recenter import recenter_move, support_pass
from edgeflow.adapt.signals import loo_score
from edgeflow.adapt.split import Cache, SplitFeatures


@torch.no_grad()
def guard_theta(split: SplitFeatures, drift: DriftNet | None, cache: Cache, labels: torch.Tensor,
                ways: int, theta0: torch.Tensor, *, settings: IntegratorSettings,
                ks: Sequence[int] | None = None, metric: str = "cosine",
                scale: float = 10.0) -> tuple[torch.Tensor, str | None, dict]:
    """(theta, the chosen candidate's name or None without leave-one-out, scores by name)."""
    need_means = settings.recenter > 0 or (drift is not None and drift.uses_stats)
    first = support_pass(split, cache, theta0, means=need_means)
    n = settings.steps if drift is not None else 0
    path = drift_path(split, drift, cache, labels, ways, theta0, settings=settings, first=first) \
        if n else None
    if torch.bincount(labels, minlength=ways).min() < 2:
        own = path[-1] if path is not None else theta0 + (recenter_move(
            theta0, first[1].mean(0), alpha=settings.recenter) if settings.recenter else 0.0)
        return own, None, {}
    cands = {"theta0": theta0}
    if settings.recenter:
        cands["recenter"] = theta0 + recenter_move(theta0, first[1].mean(0),
                                                   alpha=settings.recenter)
    if path is not None:
        ks = (1, max(1, n // 2), n) if ks is None else ks
        for k in sorted({int(k) for k in ks if 1 <= int(k) <= n}):
            cands[f"drift-{k}"] = path[k]
    scores = {}
    for name, theta in cands.items():
        feats = first[0] if name == "theta0" else split.suffix(cache, theta)
        scores[name] = loo_score(feats, labels, ways, metric=metric, scale=scale)
    chosen = "theta0"
    for name, score in scores.items():
        if score > scores[chosen]:
            chosen = name
    return cands[chosen], chosen, scores
