"""Datasets, preprocessing and episodes (numpy + PIL only; no torch)."""

from __future__ import annotations

from pathlib import Path

from edgeflow.data.builtin import BUILTIN
from edgeflow.data.episodes import Episode, EpisodeSampler
from edgeflow.data.imagefolder import ImageDataset, load_image_folder, stratified_limit
from edgeflow.data.transforms import Preprocess, preprocess

__all__ = ["BUILTIN", "Episode", "EpisodeSampler", "ImageDataset", "Preprocess", "load_dataset",
           "load_image_folder", "preprocess", "stratified_limit"]


def load_dataset(spec: str | Path, *, split: str | None = None, mode: str = "RGB",
                 size: int | None = None, skip_corrupt: bool = False, limit: int | None = None,
                 cache: bool = True, progress: bool = False) -> ImageDataset:
    """Load a dataset named by a path (directory or .zip) or a built-in name (``digits``).

    ``limit`` keeps a deterministic, class-balanced subset (see :func:`stratified_limit`).
    Built-in datasets ignore ``mode``/``size``: preprocessing adapts them to the model.
    """
    if str(spec) in BUILTIN:
        ds = BUILTIN[str(spec)]()
    else:
        ds = load_image_folder(spec, split=split, mode=mode, size=size, skip_corrupt=skip_corrupt,
                               cache=cache, progress=progress)
    if limit is not None:
        ds = ds.subset(stratified_limit(ds.labels, limit))
    return ds
