"""A task's support set as the device keeps it: what the backbone prefix made of each image.

With a split bundle (``backbone_prefix`` / ``backbone_suffix``) the cache is the prefix's output
for each support image, the activations theta cannot change; adapting again at any theta is then
a suffix pass over the cache, and a task grows (or shrinks) without the old images: new images
are run through the prefix and appended, removed classes' rows dropped, and the task adapted again
from the cache, which gives exactly what adapting on the union from scratch gives. A bundle
without the split caches the preprocessed images themselves (larger, same behaviour).
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
    """Per-row cache arrays (name -> (N, ...)) and the caller's label of each row."""

    cache: dict[str, np.ndarray]
    labels: np.ndarray  # (N,) int64, the caller's class ids

    def __post_init__(self) -> None:
        n = len(self.labels)
        if not self.cache or any(len(v) != n for v in self.cache.values()):
            raise DataError(f"support cache rows do not match its {n} labels")

    @property
    def nbytes(self) -> int:
        return int(sum(v.nbytes for v in self.cache.values()))

    def bytes_per_image(self) -> int:
        return int(sum(v[0].nbytes for v in self.cache.values()))

    def concat(self, other: Support) -> Support:
        if set(other.cache) != set(self.cache) or any(
                other.cache[k].shape[1:] != v.shape[1:] for k, v in self.cache.items()):
            # names or per-image shapes differ (a task file from another bundle, or edited)
            raise DataError("the new images' cache has other tensors than the task's; adapt the "
                            "task again from its images with this bundle")
        return Support(cache={k: np.concatenate([self.cache[k], other.cache[k]]) for k in self.cache},
                       labels=np.concatenate([self.labels, other.labels]))

    def select(self, keep: np.ndarray) -> Support:
        """The rows where ``keep`` (bool, (N,)) is true."""
        return Support(cache={k: v[keep] for k, v in self.cache.items()}, labels=self.labels[keep])

    def frozen(self) -> Support:
        return Support(cache={k: _frozen(v) for k, v in self.cache.items()},
                       labels=_frozen(self.labels))

    # -- task file members (edgeflow.runtime.task) ------------------------------------------------
    def members(self) -> tuple[dict[str, np.ndarray], dict]:
        """Arrays to save (plain member names) and the metadata naming them."""
        arrays = {f"support_{i}": v for i, v in enumerate(self.cache.values())}
        arrays["support_labels"] = self.labels
        return arrays, {"support_names": list(self.cache)}

    @classmethod
    def from_members(cls, arrays: dict[str, np.ndarray], meta: dict, *, what: str) -> Support:
        names = meta.get("support_names")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise DataError(f"{what}: support_names must name the cached tensors")
        try:
            cache = {n: arrays[f"support_{i}"] for i, n in enumerate(names)}
            labels = arrays["support_labels"]
        except KeyError as exc:
            raise DataError(f"{what}: the support cache lacks {exc}") from None
        for name, a in cache.items():
            if a.dtype != np.float32 or a.ndim < 1 or not np.isfinite(a).all():
                raise DataError(f"{what}: support tensor {name!r} must be finite float32")
        if labels.dtype != np.int64 or labels.ndim != 1:
            raise DataError(f"{what}: support labels must be 1-d int64")
        return cls(cache=cache, labels=labels).frozen()
