"""A guard that does no harm, forward only: keep an adapted theta only if the support set agrees.

Adaptation can lower accuracy on data nobody tuned for (issue 17). The guard scores a few
candidate thetas on the task's own support set, with passes of the backbone suffix only, and keeps
the best; theta0 (no adaptation) wins ties, so a move is kept only when it is *better* there:

- candidates: theta0; re-centring alone (when the bundle re-centres); the drift's trajectory after
  k of its Euler steps (plus the re-centring move, as the bundle combines them);
- score: leave-one-out nearest-prototype accuracy of the support images (each image against the
  prototype of its class's other shots and the other classes' prototypes), ties broken by the mean
  log-probability of the true class. It needs 2 shots per class; with fewer the guard keeps what
  the bundle does without it (and says so).

numpy only (the on-device runtime). What it costs is one suffix pass over the support set per
candidate; the task's ``info["guard"]`` records every candidate's score and the choice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeflow.runtime.drift_loop import drift_path
from edgeflow.runtime.protos import loo_logits

Similarity = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Candidate:
    name: str
    theta: np.ndarray


def loo_score(features: np.ndarray, labels: np.ndarray, ways: int,
              similarity: Similarity) -> tuple[float, float]:
    """(leave-one-out accuracy, mean log-probability of the true class) of a support set."""
    logits = loo_logits(features, labels, ways, similarity)
    z = logits - logits.max(1, keepdims=True)
    logp = z[np.arange(len(labels)), labels] - np.log(np.exp(z).sum(1))
    return float(np.mean(logits.argmax(1) == labels)), float(np.mean(logp))


def choose(scores: list[tuple[str, tuple[float, float]]]) -> str:
    """The best candidate by (accuracy, log-probability); the first (theta0) unless beaten."""
    best_name, best = scores[0]
    for name, score in scores[1:]:
        if score > best:
            best_name, best = name, score
    return best_name


def candidates(session: Any, cache: dict, ep: np.ndarray, w: int, feats0: np.ndarray,
               means: np.ndarray | None, steps: int | None,
               guard: bool | Sequence[int]) -> list[Candidate]:
    """theta0, re-centring alone and the drift after k steps (+ the re-centring move), from the
    support pass at theta0 (its features, and its theta-layer means when the bundle re-centres or
    the drift reads statistics); the drift's path is the bundle's own, open or closed loop."""
    move = 0.0 if not session.recenter else -session.recenter * (means.mean(0) - session.theta0)
    cands = [Candidate("theta0", session.theta0)]
    if session.recenter:
        cands.append(Candidate("recenter", session.theta0 + move))
    n = session.steps if steps is None else steps
    if session.bundle.has_drift and n > 0:
        ks = sorted({int(k) for k in ((1, max(1, n // 2), n) if guard is True else guard)
                     if 1 <= int(k) <= n})
        path = drift_path(session, cache, ep, w, feats0, means, n)
        cands += [Candidate(f"drift-{k}", path[k] + move) for k in ks]
    return [Candidate(c.name, np.asarray(c.theta, np.float32)) for c in cands]


def run_guard(session: Any, cache: dict, ep: np.ndarray, w: int, feats0: np.ndarray,
              means: np.ndarray | None, steps: int | None,
              guard: bool | Sequence[int]) -> tuple[np.ndarray, np.ndarray, dict]:
    """(theta, its support features, report) of the candidate the support set scores best
    leave-one-out, theta0 unless beaten; ``session`` is the :class:`Session` adapting."""
    cands = candidates(session, cache, ep, w, feats0, means, steps, guard)
    scores, feats_of = [], {}
    for c in cands:
        f = feats0 if c.name == "theta0" else session._suffix(cache, c.theta, "features")[0]
        feats_of[c.name] = f
        scores.append((c.name, loo_score(f, ep, w, session._similarity)))
    chosen = choose(scores)
    theta = next(c.theta for c in cands if c.name == chosen)
    return (theta, feats_of[chosen],
            {"chosen": chosen, "scores": {k: {"loo_accuracy": a, "loo_logp": lp}
                                          for k, (a, lp) in scores}})
