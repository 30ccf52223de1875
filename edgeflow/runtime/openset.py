""""None of these": rejecting queries from classes the task was not taught, from the support set alone.

The score of a query is how well it fits its best class: ``score(q) = max_c s_c(q)``, the
prototype similarity the classifier uses (scaled cosine or negative squared distance), not its
softmax. Chosen on Tiny-ImageNet *val* (200 episodes, CIFAR-10 ResNet-20): AUROC 63.4 against 59.7
for the same similarity in units of each class's leave-one-out spread, and 53.1 for max-softmax.

The threshold for a target recall of known classes comes from the support set alone: each support
image is scored like a query, against the *leave-one-out* prototype of its own class (the mean of
the class's other shots) and the other classes' prototypes, and the threshold is a low quantile
of those scores (``1 - recall``, corrected for the leave-one-out bias: ``LOO_MISS_FACTOR``); a
query scoring below it is "unknown". Forward only: the support features are already there. A class
with one shot has no other shot to compare with, so rejection refuses to guess for such a task
(flipped views as pseudo-queries were tried: a view is far more similar to its original than a
real query is, and only 3% of known CIFAR-10 queries were kept at a 95% target). numpy only (the
on-device runtime).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgeflow.errors import ConfigError, DataError
from edgeflow.runtime.protos import loo_logits

SHRINK = 4.0  # pseudo-count of the pooled spread in each class's spread
# A leave-one-out prototype has one shot fewer than the real one, so support images score a
# little lower against it than real queries do against the task, and the plain (1 - recall)
# quantile misses more known queries than asked. The quantile is taken at a miss rate of
# LOO_MISS_FACTOR * (1 - recall), chosen on Tiny-ImageNet *val* (300 episodes, CIFAR-10 ResNet-20):
# asking for 95% kept 93.1% uncorrected and 95.2% corrected.
LOO_MISS_FACTOR = 0.6
Similarity = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (Q, D), (W, D) -> (Q, W)


@dataclass(frozen=True)
class OpenSetStats:
    """What rejection needs from a task: per-class similarity statistics and the support's own
    leave-one-out scores (the in-class score distribution; empty when a class has one shot)."""

    mean: np.ndarray  # (W,) float32: each class's mean leave-one-out similarity (descriptive)
    std: np.ndarray  # (W,) float32: and its spread, shrunk toward the pooled one (descriptive)
    loo_scores: np.ndarray  # (N,) float32, or (0,) when some class has a single shot

    def threshold(self, recall: float) -> float:
        """The score below which a query is "unknown", for this recall of known classes."""
        if isinstance(recall, bool) or not isinstance(recall, (int, float)) or not 0.0 < recall <= 1.0:
            raise ConfigError(f"rejection recall must be a number in (0, 1], got {recall!r}; e.g. "
                              "0.95 keeps about 95% of the known-class images")
        if not len(self.loo_scores):
            raise DataError("rejection needs at least 2 support images per class (it measures each "
                            "class's spread leave-one-out); add shots to the one-shot classes")
        return float(np.quantile(self.loo_scores, LOO_MISS_FACTOR * (1.0 - recall),
                                 method="linear"))

    def score(self, logits: np.ndarray) -> np.ndarray:
        """Known-class score (Q,) of queries from their prototype logits (Q, W)."""
        return np.asarray(logits, np.float32).max(axis=1)


def fit(features: np.ndarray, labels: np.ndarray, ways: int,
        similarity: Similarity) -> OpenSetStats:
    """Statistics of a task's support set (features at the task's theta, episode labels 0..W-1)."""
    counts = np.bincount(labels, minlength=ways)
    if (counts < 2).any():  # no leave-one-out for a one-shot class: rejection will refuse
        return OpenSetStats(mean=np.zeros(ways, np.float32), std=np.ones(ways, np.float32),
                            loo_scores=np.zeros(0, np.float32))
    logits = loo_logits(features, labels, ways, similarity).astype(np.float32)
    sims = logits[np.arange(len(labels)), labels]
    class_mean = np.array([sims[labels == c].mean() for c in range(ways)], np.float32)
    pooled_var = max(float(np.mean((sims - class_mean[labels]) ** 2)), 1e-12)
    std = np.empty(ways, np.float32)
    for c in range(ways):
        s = sims[labels == c]
        std[c] = np.sqrt((np.sum((s - s.mean()) ** 2) + SHRINK * pooled_var) / (len(s) - 1 + SHRINK))
    # the in-class score distribution: each support image scored like a query, against its own
    # class's leave-one-out prototype and the other classes' full prototypes
    return OpenSetStats(mean=class_mean, std=std, loo_scores=logits.max(axis=1))
