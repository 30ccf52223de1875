""""None of these": rejecting queries from classes the task was not taught, from the support set alone.

The score of a query is how well it fits its best class, in units of that class's own spread:

    score(q) = max_c (s_c(q) - mu_c) / sd_c

where ``s_c`` is the prototype similarity the classifier uses (scaled cosine or negative squared
distance) and ``mu_c``, ``sd_c`` are the mean and spread of the *leave-one-out* similarities of
class c's support images to the prototype of the class's other shots (forward only: the support
features are already there). Per-class spreads are shrunk toward the pooled spread, since five
shots estimate a spread poorly. With one shot there is no other shot; flipped views of the support
image stand in as pseudo-queries (their similarity is higher than a true query's, which the report
of the benchmark measures).

The threshold for a target recall of known classes is the quantile of the support images' own
leave-one-out scores: a query is "unknown" when its score is below the ``1 - recall`` quantile.
numpy only (the on-device runtime).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeflow.errors import ConfigError

SHRINK = 4.0  # pseudo-count of the pooled spread in each class's spread


@dataclass(frozen=True)
class OpenSetStats:
    """What rejection needs from a task: per-class similarity statistics and the support's own
    leave-one-out scores (the in-class score distribution)."""

    mean: np.ndarray  # (W,) float32
    std: np.ndarray  # (W,) float32
    loo_scores: np.ndarray  # (N,) float32

    def threshold(self, recall: float) -> float:
        """The score below which a query is "unknown", for this recall of known classes."""
        if not 0.0 < recall <= 1.0:
            raise ConfigError(f"rejection recall must be in (0, 1], got {recall}; e.g. 0.95 keeps "
                              "95% of the known-class images")
        return float(np.quantile(self.loo_scores, 1.0 - recall, method="linear"))

    def score(self, logits: np.ndarray) -> np.ndarray:
        """Known-class score (Q,) of queries from their prototype logits (Q, W)."""
        return ((logits - self.mean[None]) / self.std[None]).max(axis=1)


def _logits(query: np.ndarray, protos: np.ndarray, similarity) -> np.ndarray:
    return similarity(query, protos)


def loo_similarities(features: np.ndarray, labels: np.ndarray, ways: int, similarity, *,
                     views: np.ndarray | None = None) -> np.ndarray:
    """(N,) similarity of each support image to the mean of its class's *other* shots.

    ``views``: features of flipped views, (N, D) in support order, used as pseudo-queries for
    classes with one shot (whose leave-one-out prototype would be empty).
    """
    out = np.empty(len(labels), np.float32)
    for c in range(ways):
        idx = np.flatnonzero(labels == c)
        if len(idx) == 0:
            raise ConfigError(f"class {c} has no support images")
        for i in idx:
            rest = idx[idx != i]
            if len(rest):
                proto, query = features[rest].mean(0, keepdims=True), features[i:i + 1]
            elif views is not None:
                proto, query = features[i:i + 1], views[i:i + 1]
            else:
                raise ConfigError("one shot per class: rejection needs flipped views of the support "
                                  "images as pseudo-queries")
            out[i] = _logits(query, proto, similarity)[0, 0]
    return out


def fit(features: np.ndarray, labels: np.ndarray, protos: np.ndarray, similarity, *,
        views: np.ndarray | None = None) -> OpenSetStats:
    """Statistics of a task's support set (features at the task's theta, episode labels 0..W-1)."""
    ways = len(protos)
    sims = loo_similarities(features, labels, ways, similarity, views=views)
    pooled_mean = float(sims.mean())
    resid = sims - np.array([sims[labels == c].mean() for c in range(ways)])[labels]
    pooled_var = float(np.mean(resid ** 2)) if len(sims) > ways else float(np.var(sims))
    pooled_var = max(pooled_var, 1e-6 * (abs(pooled_mean) + 1e-6))
    mean, std = np.empty(ways, np.float32), np.empty(ways, np.float32)
    for c in range(ways):
        s = sims[labels == c]
        n = len(s)
        mean[c] = s.mean()
        var = (np.sum((s - s.mean()) ** 2) + SHRINK * pooled_var) / (max(n - 1, 0) + SHRINK)
        std[c] = np.sqrt(var)
    stats = OpenSetStats(mean=mean, std=std, loo_scores=np.zeros(0, np.float32))
    # the in-class score distribution: each support image scored like a query, against the LOO
    # prototype of its own class and the full prototypes of the others
    scores = np.empty(len(labels), np.float32)
    for i, c in enumerate(labels):
        z = (_logits(features[i:i + 1], protos, similarity)[0] - mean) / std
        z[c] = (sims[i] - mean[c]) / std[c]
        scores[i] = z.max()
    return OpenSetStats(mean=stats.mean, std=stats.std, loo_scores=scores)
