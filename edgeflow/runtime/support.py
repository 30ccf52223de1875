"""A task's support set as the device keeps it: what the backbone prefix made of each image.

With a split bundle (``backbone_prefix`` / ``backbone_suffix``) the cache is the prefix's output
for each support image, the activations theta cannot change; adapting again at any theta is then
a suffix pass over the cache, and a task grows (or shrinks) without the old images: new images
are run through the prefix and appended, removed classes' rows dropped, and the task adapted again
from the cache, which gives exactly what adapting on the union from scratch gives. A bundle
without the split caches the preprocessed images themselves (larger, same behaviour).

Rows of one-shot classes also keep the cache of their horizontally flipped view: the pseudo-query
open-set rejection needs where a class has no second shot (:mod:`edgeflow.runtime.openset`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeflow.errors import DataError


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a, copy=True)
    a.flags.writeable = False
    return a


@dataclass(frozen=True)
class Support:
    """Per-row cache arrays (name -> (N, ...)), the caller's label of each row, and the flipped
    views' cache for the rows listed in ``view_rows``."""

    cache: dict[str, np.ndarray]
    labels: np.ndarray  # (N,) int64, the caller's class ids
    views: dict[str, np.ndarray]  # name -> (len(view_rows), ...)
    view_rows: np.ndarray  # (V,) int64 row indices into the cache

    def __post_init__(self) -> None:
        n = len(self.labels)
        if not self.cache or any(len(v) != n for v in self.cache.values()):
            raise DataError(f"support cache rows do not match its {n} labels")
        if set(self.views) not in (set(), set(self.cache)) or any(
                len(v) != len(self.view_rows) for v in self.views.values()):
            raise DataError("support views do not match the cache")

    @property
    def nbytes(self) -> int:
        return int(sum(v.nbytes for v in (*self.cache.values(), *self.views.values())))

    def bytes_per_image(self) -> int:
        return int(sum(v[0].nbytes for v in self.cache.values()))

    def view(self, row: int) -> dict[str, np.ndarray] | None:
        hit = np.flatnonzero(self.view_rows == row)
        if not len(hit) or not self.views:
            return None
        return {k: v[hit[0]:hit[0] + 1] for k, v in self.views.items()}

    def concat(self, other: Support) -> Support:
        if set(other.cache) != set(self.cache):
            raise DataError("the new images' cache has other tensors than the task's; adapt the "
                            "task again from its images with this bundle")
        n = len(self.labels)
        views = {}
        if self.views or other.views:
            def rows(side: Support, k: str) -> np.ndarray:  # an empty block where a side has none
                return side.views[k] if side.views else self.cache[k][:0]

            views = {k: np.concatenate([rows(self, k), rows(other, k)]) for k in self.cache}
        return Support(cache={k: np.concatenate([self.cache[k], other.cache[k]]) for k in self.cache},
                       labels=np.concatenate([self.labels, other.labels]), views=views,
                       view_rows=np.concatenate([self.view_rows, other.view_rows + n]))

    def select(self, keep: np.ndarray) -> Support:
        """The rows where ``keep`` (bool, (N,)) is true, views renumbered."""
        new_index = np.cumsum(keep) - 1
        vk = keep[self.view_rows] if len(self.view_rows) else np.zeros(0, bool)
        return Support(cache={k: v[keep] for k, v in self.cache.items()}, labels=self.labels[keep],
                       views={k: v[vk] for k, v in self.views.items()},
                       view_rows=new_index[self.view_rows[vk]].astype(np.int64))

    def frozen(self) -> Support:
        return Support(cache={k: _frozen(v) for k, v in self.cache.items()},
                       labels=_frozen(self.labels), views={k: _frozen(v) for k, v in self.views.items()},
                       view_rows=_frozen(self.view_rows))

    # -- task file members (edgeflow.runtime.task) ------------------------------------------------
    def members(self) -> tuple[dict[str, np.ndarray], dict]:
        """Arrays to save (plain member names) and the metadata naming them."""
        names = list(self.cache)
        arrays = {f"support_{i}": v for i, v in enumerate(self.cache.values())}
        arrays.update({f"support_view_{i}": self.views[k] for i, k in enumerate(names)
                       if self.views})
        arrays["support_labels"], arrays["support_view_rows"] = self.labels, self.view_rows
        return arrays, {"support_names": names, "support_views": bool(self.views)}

    @classmethod
    def from_members(cls, arrays: dict[str, np.ndarray], meta: dict, *, what: str) -> Support:
        names = meta.get("support_names")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise DataError(f"{what}: support_names must name the cached tensors")
        try:
            cache = {n: arrays[f"support_{i}"] for i, n in enumerate(names)}
            views = ({n: arrays[f"support_view_{i}"] for i, n in enumerate(names)}
                     if meta.get("support_views") else {})
            labels, rows = arrays["support_labels"], arrays["support_view_rows"]
        except KeyError as exc:
            raise DataError(f"{what}: the support cache lacks {exc}") from None
        for name, a in (*cache.items(), *views.items()):
            if a.dtype != np.float32 or a.ndim < 1 or not np.isfinite(a).all():
                raise DataError(f"{what}: support tensor {name!r} must be finite float32")
        if labels.dtype != np.int64 or labels.ndim != 1 or rows.dtype != np.int64 or rows.ndim != 1:
            raise DataError(f"{what}: support labels and view rows must be 1-d int64")
        if len(rows) and (rows.min() < 0 or rows.max() >= len(labels)):
            raise DataError(f"{what}: support view rows outside the cache")
        return cls(cache=cache, labels=labels, views=views, view_rows=rows).frozen()
