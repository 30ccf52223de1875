"""Preprocessing shared by training, export and the on-device runtime (numpy only).

One frozen :class:`Preprocess` describes how uint8 images become the float tensor a model eats; the
bundle manifest stores it so the runtime applies exactly what training applied.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from edgeflow.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """uint8 (N, H, W, C) -> float32 (N, C, H, W): resize, channel match, scale, normalise."""

    size: int
    channels: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise DataError(f"mean/std need {self.channels} values, got {self.mean} / {self.std}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        return cls(size=int(d["size"]), channels=int(d["channels"]), mean=tuple(d["mean"]),
                   std=tuple(d["std"]))

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return preprocess(images, self)


def resize_batch(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of uint8 (N, H, W, C) to (N, size, size, C)."""
    if images.shape[1:3] == (size, size):
        return images
    out = np.empty((len(images), size, size, images.shape[3]), dtype=np.uint8)
    for i, img in enumerate(images):
        pil = Image.fromarray(img[..., 0] if img.shape[2] == 1 else img)
        arr = np.asarray(pil.resize((size, size), Image.BILINEAR), dtype=np.uint8)
        out[i] = arr[..., None] if arr.ndim == 2 else arr
    return out


def match_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """Grey -> RGB by repetition, RGB -> grey by luminance; anything else is an error."""
    have = images.shape[-1]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return np.repeat(images, 3, axis=-1)
    if have == 3 and channels == 1:
        grey = images.astype(np.float32) @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32)
        return np.clip(np.rint(grey), 0, 255).astype(np.uint8)[..., None]
    raise DataError(f"images have {have} channels but the model takes {channels}; give RGB or "
                    "greyscale images")


def preprocess(images: np.ndarray, spec: Preprocess) -> np.ndarray:
    """Apply ``spec`` to uint8 (N, H, W, C) images, returning contiguous float32 NCHW."""
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.dtype != np.uint8:
        raise DataError(f"expected uint8 images of shape (N, H, W, C), got {images.dtype} "
                        f"{images.shape}")
    images = match_channels(resize_batch(images, spec.size), spec.channels)
    x = images.astype(np.float32) * (1.0 / 255.0)
    x -= np.asarray(spec.mean, dtype=np.float32)
    x /= np.asarray(spec.std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
