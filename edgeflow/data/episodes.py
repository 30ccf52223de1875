"""Reproducible N-way K-shot episodes.

Episode ``i`` of a sampler is drawn from its own generator seeded by ``(seed, i)``, so any episode
can be rebuilt alone and every method evaluated on a seed sees exactly the same episodes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from edgeflow.errors import DataError


@dataclass(frozen=True)
class Episode:
    """Indices into a dataset; labels are episode-local (0..ways-1), ``classes`` the global ids."""

    classes: np.ndarray  # (ways,)
    support: np.ndarray  # (ways*shots,)
    support_labels: np.ndarray
    query: np.ndarray  # (ways*queries,)
    query_labels: np.ndarray


class EpisodeSampler:
    """Seeded N-way K-shot Q-query episodes over integer ``labels``."""

    def __init__(self, labels: np.ndarray, *, ways: int, shots: int, queries: int,
                 seed: int = 0) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        for name, v in (("ways", ways), ("shots", shots), ("queries", queries)):
            if v < 1:
                raise DataError(f"{name} must be at least 1, got {v}")
        classes, counts = np.unique(labels, return_counts=True)
        if ways > len(classes):
            raise DataError(f"{ways}-way episodes need {ways} classes but the data has "
                            f"{len(classes)}; lower --ways or use data with more classes")
        need = shots + queries
        eligible = classes[counts >= need]
        if len(eligible) < ways:
            short = [(int(c), int(n)) for c, n in zip(classes, counts, strict=True) if n < need]
            raise DataError(f"{shots}-shot {queries}-query episodes need {need} images per class; "
                            f"only {len(eligible)} classes have that (class, count): {short[:5]}; "
                            "lower --shots/--queries or --ways")
        self.ways, self.shots, self.queries, self.seed = ways, shots, queries, seed
        self._classes = eligible
        self._by_class = {int(c): np.nonzero(labels == c)[0] for c in eligible}

    def episode(self, index: int) -> Episode:
        rng = np.random.default_rng([self.seed, index])
        chosen = np.sort(rng.choice(self._classes, size=self.ways, replace=False))
        sup, qry = [], []
        for c in chosen:
            pick = rng.choice(self._by_class[int(c)], size=self.shots + self.queries, replace=False)
            sup.append(pick[: self.shots])
            qry.append(pick[self.shots:])
        ways = np.arange(self.ways)
        return Episode(classes=chosen, support=np.concatenate(sup),
                       support_labels=np.repeat(ways, self.shots), query=np.concatenate(qry),
                       query_labels=np.repeat(ways, self.queries))

    def __call__(self, count: int, *, start: int = 0) -> Iterator[Episode]:
        for i in range(start, start + count):
            yield self.episode(i)
