"""Input checks for the Session: images and labels, with errors that say what to fix (numpy only)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgeflow.data.transforms import Preprocess, match_channels, resize_batch
from edgeflow.errors import DataError
from edgeflow.runtime.manifest import MAX_STEPS


def _stack(images: np.ndarray | Sequence[np.ndarray], pre: Preprocess, allow_resize: bool,
           what: str) -> np.ndarray:
    """A list of HxW[xC] uint8 images (sizes may differ when resizing is allowed) -> one array."""
    items = [np.asarray(im) for im in images]
    if not items:
        raise DataError(f"{what}: no images given")
    out = []
    for i, im in enumerate(items):
        if im.dtype != np.uint8:
            raise DataError(f"{what}[{i}]: a list of images must hold uint8 arrays, got {im.dtype}")
        if im.ndim == 2:
            im = im[..., None]
        if im.ndim != 3:
            raise DataError(f"{what}[{i}]: expected an (H, W) or (H, W, C) image, got {im.shape}")
        if 0 in im.shape:
            raise DataError(f"{what}[{i}] is empty ({im.shape}); give a decoded image")
        if im.shape[:2] != (pre.size, pre.size):
            if not allow_resize:
                raise DataError(f"{what}[{i}] is {im.shape[0]}x{im.shape[1]} but the bundle takes "
                                f"{pre.size}x{pre.size} and does not allow resizing; resize it")
            im = resize_batch(_fix_alpha(im[None], what), pre.size)[0]
        out.append(im)
    channels = {im.shape[2] for im in out}
    if len(channels) > 1:
        out = [_fix_alpha(im[None], what)[0] for im in out]
        out = [match_channels(im[None], pre.channels)[0] for im in out]
    return np.stack(out)


def _fix_alpha(images: np.ndarray, what: str) -> np.ndarray:
    if images.shape[-1] == 4:  # RGBA: the alpha channel carries no class information
        return images[..., :3]
    if images.shape[-1] not in (1, 3):
        raise DataError(f"{what}: images have {images.shape[-1]} channels; give RGB or greyscale")
    return images


def prepare_images(images: np.ndarray | Sequence[np.ndarray], pre: Preprocess, *,
                   allow_resize: bool = True, what: str = "images") -> np.ndarray:
    """uint8 (N, H, W[, C]) images (or a list of them) -> float32 (N, C, S, S) ready for the graph.

    Float input is taken as already preprocessed: it must be (N, C, S, S) and finite.
    """
    if isinstance(images, (list, tuple)):
        images = _stack(images, pre, allow_resize, what)
    arr = np.asarray(images)
    if arr.size == 0 or (arr.ndim >= 1 and arr.shape[0] == 0):
        raise DataError(f"{what}: empty batch; give at least one image")
    if arr.dtype.kind == "f":
        want = (pre.channels, pre.size, pre.size)
        if arr.ndim != 4 or arr.shape[1:] != want:
            raise DataError(f"{what}: float input is taken as preprocessed and must be (N, "
                            f"{', '.join(map(str, want))}), got {arr.shape}; pass uint8 (N, H, W, C) "
                            "images to have the bundle's preprocessing applied")
        with np.errstate(over="ignore"):  # a float64 value beyond float32's range becomes inf
            arr = np.ascontiguousarray(arr, dtype=np.float32)
        bad = ~np.isfinite(arr.reshape(len(arr), -1)).all(axis=1)
        if bad.any():
            raise DataError(f"{what}: NaN or inf in image(s) {np.nonzero(bad)[0][:10].tolist()} "
                            "(or a value beyond float32's range); check the camera/decoder output")
        return arr
    if arr.dtype != np.uint8:
        raise DataError(f"{what}: expected uint8 images (N, H, W, C), got dtype {arr.dtype}")
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4:
        raise DataError(f"{what}: expected uint8 images (N, H, W, C), got shape {arr.shape}")
    if 0 in arr.shape[1:]:
        raise DataError(f"{what}: images of shape {arr.shape[1:]} are empty; give decoded images")
    arr = _fix_alpha(arr, what)
    if arr.shape[1:3] != (pre.size, pre.size) and not allow_resize:
        raise DataError(f"{what} are {arr.shape[1]}x{arr.shape[2]} but the bundle takes "
                        f"{pre.size}x{pre.size} and does not allow resizing; resize them first")
    if arr.shape[-1] not in (1, 3) or (arr.shape[-1] != pre.channels and pre.channels not in (1, 3)):
        raise DataError(f"{what} have {arr.shape[-1]} channels but the bundle takes {pre.channels}")
    return pre(arr)


def check_labels(labels: object, n: int, *, ways: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(classes (W,) sorted int64, episode labels (N,) in 0..W-1) of integer support ``labels``."""
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise DataError(f"labels must be a 1-d sequence of integers, got shape {arr.shape}")
    if len(arr) == 0:
        raise DataError("empty support set: adapt needs at least one labelled image per class")
    if arr.dtype.kind not in "iu":
        what = "integers beyond 64 bits" if arr.dtype == object and all(
            isinstance(v, int) for v in arr[:3].tolist()) else str(arr.dtype)
        raise DataError(f"labels must be integers below 2**63, got {what} (e.g. "
                        f"{str(arr[:3].tolist())[:80]}); map class names to integers 0..W-1 (and "
                        "pass class_names=)")
    if arr.dtype.kind == "u" and arr.max() > np.iinfo(np.int64).max:
        raise DataError(f"labels must be below 2**63, got {int(arr.max())}; map class names to "
                        "integers 0..W-1 (and pass class_names=)")
    if len(arr) != n:
        raise DataError(f"{n} support images but {len(arr)} labels; give one label per image")
    arr = arr.astype(np.int64)
    classes, episode = np.unique(arr, return_inverse=True)
    if ways is not None:
        if isinstance(ways, bool) or not isinstance(ways, (int, np.integer)):
            raise DataError(f"ways must be an integer, got {ways!r}")
        if ways < 1:
            raise DataError(f"ways must be at least 1, got {ways}")
        outside = sorted({int(c) for c in classes if not 0 <= c < ways})
        if outside:
            raise DataError(f"labels {outside[:5]} are outside 0..{ways - 1} for ways={ways}")
        absent = sorted(set(range(ways)) - {int(c) for c in classes})
        if absent:
            raise DataError(f"class(es) {absent} have no support image; every class needs at least "
                            "one labelled image")
    return classes, episode.astype(np.int64)



def check_steps(steps: object) -> int:
    """An integration-step override: an integer in 0..MAX_STEPS."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
        raise DataError(f"steps must be an integer, got {steps!r}")
    if not 0 <= steps <= MAX_STEPS:
        raise DataError(f"steps must be in 0..{MAX_STEPS}, got {steps}")
    return int(steps)
