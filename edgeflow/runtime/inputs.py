"""Input checks for the Session: images and labels, with errors that say what to fix (numpy only).

Images come as the camera or decoder gives them: uint8 arrays, a list of differently sized ones,
one image on its own, PIL images in any mode, or arrays as ``np.asarray(PIL image)`` gives them
(bool for 1-bit, uint16 for 16-bit, two channels for grey + alpha). All become uint8 (N, H, W, C)
in the bundle's channels before the bundle's preprocessing runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edgeflow.data.transforms import Preprocess, match_channels, resize_batch
from edgeflow.errors import DataError
from edgeflow.runtime.manifest import MAX_STEPS

# a task tells classes apart: with one class every image gets it with score 1.0. Open-set
# rejection (a threshold on the score) makes one class meaningful; it relaxes this to 1.
MIN_CLASSES = 2


def _is_pil(obj: Any) -> bool:
    # duck-typed so that this module does not need PIL to check numpy input
    return hasattr(obj, "mode") and hasattr(obj, "convert") and hasattr(obj, "getbands")


def _from_pil(img: Any, pre: Preprocess) -> np.ndarray:
    from edgeflow.data.imagefolder import convert_mode

    arr = np.asarray(convert_mode(img, "L" if pre.channels == 1 else "RGB"), dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def _as_uint8(im: np.ndarray, what: str) -> np.ndarray:
    """bool (1-bit images) -> 0/255, uint16 (16-bit images) -> scaled; uint8 as it is."""
    if im.dtype == np.uint8:
        return im
    if im.dtype == np.bool_:
        return im.astype(np.uint8) * np.uint8(255)
    if im.dtype == np.uint16:
        return np.rint(im.astype(np.float32) * (255.0 / 65535.0)).astype(np.uint8)
    raise DataError(f"{what}: expected uint8 images (or bool / uint16 as 1-bit and 16-bit images "
                    f"decode to), got {im.dtype}; convert them to uint8 0..255, or pass float32 "
                    "(N, C, S, S) already preprocessed")


def _drop_alpha_grey(im: np.ndarray) -> np.ndarray:
    """(..., 2) grey + alpha -> (..., 1) grey: the alpha channel carries no class information."""
    return im[..., :1] if im.ndim >= 3 and im.shape[-1] == 2 else im


def _stack(images: np.ndarray | Sequence[np.ndarray], pre: Preprocess, allow_resize: bool,
           what: str) -> np.ndarray:
    """A list of HxW[xC] uint8 images (sizes may differ when resizing is allowed) -> one array."""
    items = [_from_pil(im, pre) if _is_pil(im) else np.asarray(im) for im in images]
    if not items:
        raise DataError(f"{what}: no images given")
    out = []
    for i, im in enumerate(items):
        im = _drop_alpha_grey(_as_uint8(im, f"{what}[{i}]"))
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

    Also taken: one image (H, W) or (H, W, C) with C of 1 to 4 (grey images are (N, H, W) with
    W > 4), PIL images in any mode, bool (1-bit) and uint16 (16-bit) arrays, grey + alpha (C = 2)
    and RGBA (alpha dropped); grey and RGB are matched to the bundle's channels. Float input is
    taken as already preprocessed: it must be (N, C, S, S) and finite.
    """
    if _is_pil(images):
        images = [images]
    if isinstance(images, (list, tuple)):
        images = _stack(images, pre, allow_resize, what)
    arr = np.asarray(images)
    if arr.dtype.kind != "f":
        arr = _as_uint8(arr, what)
        if arr.ndim == 2 or (arr.ndim == 3 and 1 <= arr.shape[-1] <= 4):  # one image, (H, W[, C])
            arr = arr[None]  # ((H, W, 3) was read as H grey images: "105 support images...")
        arr = _drop_alpha_grey(arr)
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
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4:
        raise DataError(f"{what}: expected uint8 images (N, H, W, C), one image (H, W, C) or grey "
                        f"images (N, H, W), with C = {pre.channels} for this bundle (1, 3 or 4 "
                        f"are converted), got shape {arr.shape}")
    if 0 in arr.shape[1:]:
        raise DataError(f"{what}: images of shape {arr.shape[1:]} are empty; give decoded images")
    arr = _fix_alpha(arr, what)
    if arr.shape[1:3] != (pre.size, pre.size) and not allow_resize:
        raise DataError(f"{what} are {arr.shape[1]}x{arr.shape[2]} but the bundle takes "
                        f"{pre.size}x{pre.size} and does not allow resizing; resize them first")
    if arr.shape[-1] not in (1, 3) or (arr.shape[-1] != pre.channels and pre.channels not in (1, 3)):
        raise DataError(f"{what} have {arr.shape[-1]} channels but the bundle takes {pre.channels}")
    return pre(arr)


def check_class_count(classes: Sequence[object], *, min_classes: int = MIN_CLASSES,
                      what: str = "the support set") -> None:
    """Raise :class:`DataError` unless ``classes`` (names or ids) number at least ``min_classes``.

    One class is refused by default: prototypes tell classes apart, so a one-class task predicts
    that class for every image with score 1.0. Open-set rejection passes ``min_classes=1``.
    """
    if len(classes) >= min_classes:
        return
    shown = ", ".join(repr(str(c)) for c in list(classes)[:5])
    if len(classes) == 1:
        raise DataError(f"{what} has only one class ({shown}): a task tells classes apart, so "
                        f"every image would be predicted {shown} with score 1.0; add images of at "
                        "least one more class (a folder, or label, per class)")
    raise DataError(f"{what} has {len(classes)} classes ({shown}) but at least {min_classes} are "
                    "needed; add images of more classes")


def check_labels(labels: object, n: int, *, ways: int | None = None,
                 min_classes: int = MIN_CLASSES) -> tuple[np.ndarray, np.ndarray]:
    """(classes (W,) sorted int64, episode labels (N,) in 0..W-1) of integer support ``labels``.

    Fewer than ``min_classes`` distinct labels is an error (see :func:`check_class_count`).
    """
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
    check_class_count(classes.tolist(), min_classes=min_classes)
    return classes, episode.astype(np.int64)


def check_steps(steps: object) -> int:
    """An integration-step override: an integer in 0..MAX_STEPS."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
        raise DataError(f"steps must be an integer, got {steps!r}")
    if not 0 <= steps <= MAX_STEPS:
        raise DataError(f"steps must be in 0..{MAX_STEPS}, got {steps}")
    return int(steps)
