"""A guard that does no harm, forward only: keep an adapted theta only if the support set agrees.

Adaptation can lower accuracy on data nobody tuned for (issue 17). The guard scores a few
candidate thetas on the task's own support set, with passes of the backbone suffix only, and keeps
the best; theta0 (no adaptation) wins ties, so a move is kept only when it is *better* there:

- candidates: theta0; re-centring alone (at the bundle's re-centring strength, else, in mode
  ``"loo"`` only, at the manifest's ``integrator.guard_recenter``: val's best strength for
  re-centring alone, which an outcome drift's bundle carries since its drift re-centres inside
  itself; at 1 shot it let MNIST lose 0.5 point on both digits compiles); the drift's trajectory after
  k of its Euler steps (plus the re-centring move, as the bundle combines them);
- score, mode ``"loo"`` (every class has 2 shots): leave-one-out nearest-prototype accuracy of the
  support images (each image against the prototype of its class's other shots and the other
  classes' prototypes), ties broken by the mean log-probability of the true class;
- score, mode ``"flip"`` (some class has 1 shot, so no leave-one-out): the support images flipped
  along their width are the queries, classified against the prototypes of the original images at
  the candidate theta, with the same similarity; accuracy alone decides (no log-probability
  tie-break): a flipped view is an easy query, most candidates tie on accuracy, and any move that
  sharpens the prototypes raises the views' log-probability whether or not it helps real queries
  (on the digits bundle the tie-break chose a move in 90% of 1-shot episodes and lost 0.60 points
  against no adaptation; accuracy alone lost 0.16). The flipped
  views go through the backbone prefix once (:func:`flip_width`, ``Session.support_cache``), so
  a candidate costs one suffix pass over the originals and their views. Only a caller that has the
  images can make them (``Session.adapt``; ``adapt_support`` takes them as ``views``): without
  them a 1-shot guard keeps the bundle's own move and says why.

numpy only (the on-device runtime). What it costs is one suffix pass per candidate (theta0's
originals come from the support pass adapt makes anyway). The task's ``info["guard"]`` is
``{"mode": "loo" | "flip", "chosen": NAME, "scores": {NAME: {"<mode>_accuracy": a,
"<mode>_logp": lp}}}`` for every candidate; without views at 1 shot ``{"mode": None, "chosen":
None, "why": ...}``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeflow.runtime.drift_loop import drift_path
from edgeflow.runtime.protos import loo_logits, prototypes
from edgeflow.runtime.signals import recenter_move

Similarity = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Candidate:
    name: str
    theta: np.ndarray


def flip_width(x: np.ndarray) -> np.ndarray:
    """Preprocessed images (N, C, H, W) mirrored left to right: the 1-shot guard's pseudo-queries
    (``torch.flip(x, (3,))`` in PyTorch, :class:`edgeflow.adapt.split.TaskCache`)."""
    return np.ascontiguousarray(np.asarray(x)[..., ::-1])


def query_score(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(accuracy, mean log-probability of the true class) of query logits (Q, W)."""
    logits = np.asarray(logits, np.float64)
    z = logits - logits.max(1, keepdims=True)
    logp = z[np.arange(len(labels)), labels] - np.log(np.exp(z).sum(1))
    return float(np.mean(logits.argmax(1) == labels)), float(np.mean(logp))


def loo_score(features: np.ndarray, labels: np.ndarray, ways: int,
              similarity: Similarity) -> tuple[float, float]:
    """(leave-one-out accuracy, mean log-probability of the true class) of a support set."""
    return query_score(loo_logits(features, labels, ways, similarity), labels)


def flip_score(features: np.ndarray, views: np.ndarray, labels: np.ndarray, ways: int,
               similarity: Similarity) -> tuple[float, float]:
    """(accuracy, mean log-probability) of the flipped views' features ``views`` (row i is image
    i's view) against the prototypes of the originals' ``features``: works at 1 shot."""
    return query_score(similarity(views, prototypes(features, labels, ways)), labels)


def choose(scores: list[tuple[str, tuple[float, float]]], *, tie_break: bool = True) -> str:
    """The best candidate by (accuracy, log-probability), or by accuracy alone without
    ``tie_break``; the first (theta0) unless strictly beaten."""
    width = 2 if tie_break else 1
    best_name, best = scores[0]
    for name, score in scores[1:]:
        if score[:width] > best[:width]:
            best_name, best = name, score
    return best_name


def candidates(session: Any, cache: dict, ep: np.ndarray, w: int, feats0: np.ndarray,
               means: np.ndarray | None, steps: int | None,
               guard: bool | Sequence[int], *, mode: str = "loo") -> list[Candidate]:
    """theta0, re-centring alone and the drift after k steps (+ the re-centring move), from the
    support pass at theta0 (its features, and its theta-layer means when the bundle or its guard
    re-centres or the drift reads statistics); the drift's path is the bundle's own, open or
    closed loop. ``guard_recenter``'s candidate is in ``mode`` "loo" only; a bundle's own
    re-centring is a candidate in both modes."""
    theta0 = session.theta0
    move = recenter_move(theta0, means, alpha=session.recenter) if session.recenter else 0.0
    cands = [Candidate("theta0", theta0)]
    alpha = session.guard_alpha if mode == "loo" else session.recenter
    if alpha:  # the bundle's own strength, else (leave-one-out) its guard_recenter
        cands.append(Candidate("recenter", theta0 + recenter_move(theta0, means, alpha=alpha)))
    n = session.steps if steps is None else steps
    if session.bundle.has_drift and n > 0:
        ks = sorted({int(k) for k in ((1, max(1, n // 2), n) if guard is True else guard)
                     if 1 <= int(k) <= n})
        path = drift_path(session, cache, ep, w, feats0, means, n)
        cands += [Candidate(f"drift-{k}", path[k] + move) for k in ks]
    return [Candidate(c.name, np.asarray(c.theta, np.float32)) for c in cands]


def run_guard(session: Any, cache: dict, ep: np.ndarray, w: int, feats0: np.ndarray,
              means: np.ndarray | None, steps: int | None, guard: bool | Sequence[int], *,
              views: dict | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """(theta, its support features, report) of the candidate the support set scores best,
    theta0 unless beaten; ``session`` is the :class:`Session` adapting. ``views``: the support
    cache of the images flipped along width (row i = image i), used when some class has 1 shot."""
    mode = "loo" if np.bincount(ep, minlength=w).min() >= 2 else "flip"
    if mode == "flip" and views is None:
        raise ValueError("a class has 1 shot: the guard needs the flipped views' cache")
    n = len(ep)
    both = None if mode == "loo" else {k: np.concatenate([cache[k], views[k]]) for k in cache}
    scores, feats_of = [], {}
    for c in candidates(session, cache, ep, w, feats0, means, steps, guard, mode=mode):
        if mode == "loo":
            f = feats0 if c.name == "theta0" else session._suffix(cache, c.theta, "features")[0]
            score = loo_score(f, ep, w, session._similarity)
        else:  # one suffix pass over originals + views (theta0's originals are known already)
            if c.name == "theta0":
                f, fv = feats0, session._suffix(views, c.theta, "features")[0]
            else:
                f, fv = np.split(session._suffix(both, c.theta, "features")[0], [n])
            score = flip_score(f, fv, ep, w, session._similarity)
        feats_of[c.name] = (c.theta, f)
        scores.append((c.name, score))
    chosen = choose(scores, tie_break=mode == "loo")
    return (*feats_of[chosen],
            {"mode": mode, "chosen": chosen,
             "scores": {k: {f"{mode}_accuracy": a, f"{mode}_logp": lp} for k, (a, lp) in scores}})
