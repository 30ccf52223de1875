"""The forward-only guard in PyTorch: the reference :mod:`edgeflow.runtime.guard` reproduces, and
what the evaluation harness and benchmarks run (method ``hyperflow-guard``).

Candidates: theta0, re-centring alone (at ``settings.guard_alpha``: the settings' own re-centring
strength, else ``guard_recenter``, which only mode ``"loo"`` uses), and the drift's path after k
of its Euler steps (open or closed loop, plus the re-centring move). Each is scored on the support
set alone, theta0 kept unless a candidate is strictly better by (accuracy, mean log-probability of
the true class):

- mode ``"loo"`` (every class has 2 shots): leave-one-out prototype scores;
- mode ``"flip"`` (some class has 1 shot): the support images flipped along width (``x.flip(3)``,
  NCHW; :class:`edgeflow.adapt.split.TaskCache` appends them as its views) are the queries against
  the originals' prototypes, one suffix pass over both per candidate; accuracy alone decides
  (an easy query's log-probability rises with any sharpening move; see :mod:`edgeflow.runtime.guard`).

At 1 shot without ``views`` there is nothing to score with, so the settings' own adaptation is
returned (as the device does when it has only the cache). The report has the device's shape:
``{"mode", "chosen", "scores": {name: {"<mode>_accuracy", "<mode>_logp"}}}``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from edgeflow.adapt.apply import IntegratorSettings, prototype_logits
from edgeflow.adapt.drift import DriftNet
from edgeflow.adapt.loop import drift_path
from edgeflow.adapt.recenter import recenter_move, support_pass
from edgeflow.adapt.signals import loo_score, query_score
from edgeflow.adapt.split import Cache, SplitFeatures, cat
from edgeflow.adapt.theta import prototypes


def flip_score(features: torch.Tensor, views: torch.Tensor, labels: torch.Tensor, ways: int, *,
               metric: str = "cosine", scale: float = 10.0) -> tuple[float, float]:
    """(accuracy, mean log-probability) of the flipped views' features ``views`` (row i is image
    i's view) against the prototypes of the originals' ``features`` (works at 1 shot)."""
    protos = prototypes(features, labels, ways)
    return query_score(prototype_logits(views, protos, metric=metric, scale=scale), labels)


@torch.no_grad()
def guard_theta(split: SplitFeatures, drift: DriftNet | None, cache: Cache, labels: torch.Tensor,
                ways: int, theta0: torch.Tensor, *, settings: IntegratorSettings,
                ks: Sequence[int] | None = None, metric: str = "cosine", scale: float = 10.0,
                views: Cache | None = None, with_thetas: bool = False
                ) -> tuple[torch.Tensor, dict]:
    """(theta, report); ``views``: the prefix cache of the support images flipped along width,
    row for row, scored with when some class has 1 shot (report ``chosen`` None without it).
    ``with_thetas``: the report also holds every candidate's theta (``"thetas"``: name -> theta),
    for a benchmark that scores them on the queries (how often the guard picks the best)."""
    mode = "loo" if torch.bincount(labels, minlength=ways).min() >= 2 else "flip"
    # guard_recenter's candidate in leave-one-out mode only (see edgeflow.runtime.guard)
    alpha = settings.guard_alpha if mode == "loo" else settings.recenter
    need_means = alpha > 0 or (drift is not None and drift.uses_stats)
    first = support_pass(split, cache, theta0, means=need_means)
    n = settings.steps if drift is not None else 0
    path = drift_path(split, drift, cache, labels, ways, theta0, settings=settings, first=first) \
        if n else None
    if mode == "flip" and views is None:
        own = path[-1] if path is not None else theta0 + (recenter_move(
            theta0, first[1].mean(0), alpha=settings.recenter) if settings.recenter else 0.0)
        return own, {"mode": None, "chosen": None, "scores": {}}
    cands = {"theta0": theta0}
    if alpha:
        cands["recenter"] = theta0 + recenter_move(theta0, first[1].mean(0), alpha=alpha)
    if path is not None:
        ks = (1, max(1, n // 2), n) if ks is None else ks
        for k in sorted({int(k) for k in ks if 1 <= int(k) <= n}):
            cands[f"drift-{k}"] = path[k]
    both = None if mode == "loo" else cat([cache, views])
    scores = {}
    for name, theta in cands.items():
        if mode == "loo":
            feats = first[0] if name == "theta0" else split.suffix(cache, theta)
            scores[name] = loo_score(feats, labels, ways, metric=metric, scale=scale)
            continue
        if name == "theta0":  # the originals' features at theta0 come from the support pass
            feats, fv = first[0], split.suffix(views, theta)
        else:
            feats, fv = split.suffix(both, theta).split(len(labels))
        scores[name] = flip_score(feats, fv, labels, ways, metric=metric, scale=scale)
    width = 2 if mode == "loo" else 1  # flip: accuracy alone (see edgeflow.runtime.guard)
    chosen = "theta0"
    for name, score in scores.items():
        if score[:width] > scores[chosen][:width]:
            chosen = name
    report = {"mode": mode, "chosen": chosen, "scores": {
        k: {f"{mode}_accuracy": a, f"{mode}_logp": lp} for k, (a, lp) in scores.items()}}
    if with_thetas:
        report["thetas"] = cands
    return cands[chosen], report
