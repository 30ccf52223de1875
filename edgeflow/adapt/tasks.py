"""Few-shot tasks as tensors, and the per-task domain shifts that give base-split tasks diversity.

A domain shift is drawn once per task (its parameters from the task's own generator) and applied to
every image of the task, support and query alike, on uint8 NHWC images before preprocessing. They
imitate what separates the test domains from natural images (colour loss, inversion, strokes,
low resolution, rotation) without ever reading a test domain.

Instance tasks (:func:`make_instance_task`) add the other thing that separates GTSRB or Omniglot
from natural-image classes: the classes of a task are near-identical objects (``ways`` images of
*one* base class, each a class of its own, seen through random crops and lighting). There the
backbone's features are dominated by what the classes share, and fine-tuning the shifts pays: the
teacher gains +3.9 points on such tasks and nothing on class tasks (measured on the Tiny-ImageNet
recipe's backbone; GTSRB itself gains +4.3). Without them, base tasks taught the drift to stay put.

Example::

    ds = load_dataset("../shared/data/tiny-imagenet/base.zip", size=32)
    task = make_task(ds, EpisodeSampler(ds.labels, ways=5, shots=5, queries=15).episode(0),
                     Preprocess(size=32), shift=sample_shift(np.random.default_rng(0)))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageFilter

from edgeflow.data import Episode, ImageDataset, Preprocess, preprocess
from edgeflow.errors import DataError, unknown_name

Shift = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _grey(x: np.ndarray) -> np.ndarray:
    """Luminance (N, H, W) float32 in [0, 255]."""
    return x[..., :3].astype(np.float32) @ np.asarray([0.299, 0.587, 0.114], np.float32) \
        if x.shape[-1] == 3 else x[..., 0].astype(np.float32)


def _rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(np.clip(np.rint(grey), 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


def greyscale(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _rgb(_grey(x))


def invert(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return 255 - x


def channel_permute(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    perms = [(0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]
    return np.ascontiguousarray(x[..., list(perms[rng.integers(len(perms))])])


def blur(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    radius = float(rng.uniform(0.8, 1.8))
    return np.stack([np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(radius)))
                     for img in x])


def posterize(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    bits = int(rng.integers(1, 3))
    return x & np.uint8((0xFF << (8 - bits)) & 0xFF)


def solarize(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    threshold = int(rng.integers(64, 192))
    return np.where(x >= threshold, 255 - x, x).astype(np.uint8)


def edges(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sobel magnitude of the luminance, white strokes on black (digit-like)."""
    g = np.pad(_grey(x), ((0, 0), (1, 1), (1, 1)), mode="edge")
    gx = (g[:, :-2, 2:] + 2 * g[:, 1:-1, 2:] + g[:, 2:, 2:]) - (g[:, :-2, :-2] + 2 * g[:, 1:-1, :-2]
                                                              + g[:, 2:, :-2])
    gy = (g[:, 2:, :-2] + 2 * g[:, 2:, 1:-1] + g[:, 2:, 2:]) - (g[:, :-2, :-2] + 2 * g[:, :-2, 1:-1]
                                                              + g[:, :-2, 2:])
    mag = np.sqrt(gx ** 2 + gy ** 2)
    mag *= 255.0 / np.maximum(mag.reshape(len(x), -1).max(1), 1e-3)[:, None, None]
    return _rgb(mag)


def binarize(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Two-tone silhouettes: luminance above/below each image's median (stroke-like)."""
    g = _grey(x)
    return _rgb(np.where(g > np.median(g.reshape(len(x), -1), axis=1)[:, None, None], 255.0, 0.0))


def low_resolution(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = x.shape[1:3]
    side = int(rng.choice([6, 8, 12]))
    return np.stack([np.asarray(Image.fromarray(img).resize((side, side), Image.BILINEAR)
                                .resize((w, h), Image.NEAREST)) for img in x])


def rotate(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.ascontiguousarray(np.rot90(x, k=int(rng.integers(1, 4)), axes=(1, 2)))


SHIFTS: dict[str, Shift] = {
    "greyscale": greyscale,
    "invert": invert,
    "channel_permute": channel_permute,
    "blur": blur,
    "posterize": posterize,
    "solarize": solarize,
    "edges": edges,
    "binarize": binarize,
    "low_resolution": low_resolution,
    "rotate": rotate,
}


def sample_shift(rng: np.random.Generator, *, plain_fraction: float = 0.35,
                 max_ops: int = 2) -> tuple[str, ...]:
    """Names of the shifts for one task: none with probability ``plain_fraction``, else 1..max_ops."""
    if rng.random() < plain_fraction:
        return ()
    n = int(rng.integers(1, max_ops + 1))
    return tuple(str(s) for s in rng.choice(list(SHIFTS), size=n, replace=False))


def apply_shift(images: np.ndarray, names: tuple[str, ...], rng: np.random.Generator) -> np.ndarray:
    """Apply the named shifts in order to uint8 NHWC ``images`` (RGB; grey is expanded first)."""
    x = np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images
    for name in names:
        if name not in SHIFTS:
            raise unknown_name("domain shift", name, list(SHIFTS))
        x = SHIFTS[name](x, rng)
    return x


def instance_views(image: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` views of one uint8 HWC image: a random crop of 25-70% of its area resized back,
    a horizontal flip half the time, and a random contrast and brightness gain (0.6-1.4)."""
    h, w = image.shape[:2]
    out = []
    for _ in range(n):
        side_h = max(2, int(h * np.sqrt(rng.uniform(0.25, 0.7))))
        side_w = max(2, int(w * side_h / h))
        i, j = int(rng.integers(0, h - side_h + 1)), int(rng.integers(0, w - side_w + 1))
        crop = Image.fromarray(image[i:i + side_h, j:j + side_w].squeeze())
        x = np.asarray(crop.resize((w, h), Image.BILINEAR), np.float32).reshape(h, w, -1)
        if rng.random() < 0.5:
            x = x[:, ::-1]
        mean = x.mean()
        x = (x - mean) * rng.uniform(0.6, 1.4) + mean * rng.uniform(0.6, 1.4)
        out.append(np.clip(np.rint(x), 0, 255).astype(np.uint8))
    return np.stack(out)


@dataclass
class Task:
    """One episode as tensors: preprocessed images and episode-local labels (0..ways-1)."""

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    ways: int
    shift: tuple[str, ...] = ()
    kind: str = "class"  # "class": an episode of the dataset's classes; "instance": see module doc

    @property
    def shots(self) -> int:
        return len(self.support_y) // self.ways


def make_task(ds: ImageDataset, episode: Episode, spec: Preprocess, *, shift: tuple[str, ...] = (),
              seed: int | list[int] = 0) -> Task:
    """Tensors of ``episode`` of ``ds``, with ``shift`` applied (its parameters seeded by ``seed``)."""
    idx = np.concatenate([episode.support, episode.query])
    images = ds.images[idx]
    if shift:
        images = apply_shift(images, shift, np.random.default_rng(seed))
    x = torch.from_numpy(preprocess(images, spec))
    n = len(episode.support)
    return Task(support_x=x[:n], support_y=torch.from_numpy(episode.support_labels).long(),
                query_x=x[n:], query_y=torch.from_numpy(episode.query_labels).long(),
                ways=len(episode.classes), shift=shift)


def make_instance_task(ds: ImageDataset, rng: np.random.Generator, spec: Preprocess, *, ways: int,
                       shots: int, queries: int, shift: tuple[str, ...] = (),
                       seed: int | list[int] = 0) -> Task:
    """An instance task: ``ways`` images of one random class of ``ds``, each its own class, with
    ``shots`` support and ``queries`` query views (:func:`instance_views`) of each."""
    labels = np.asarray(ds.labels)
    classes, counts = np.unique(labels, return_counts=True)
    usable = classes[counts >= ways]
    if not len(usable):
        raise DataError(f"instance tasks need a class with at least {ways} images; the largest has "
                        f"{counts.max()}: use more images per class (raise --limit) or fewer ways")
    pool = np.nonzero(labels == rng.choice(usable))[0]
    picks = ds.images[rng.choice(pool, ways, replace=False)]
    views = [instance_views(img, shots + queries, rng) for img in picks]
    images = np.concatenate([v[:shots] for v in views] + [v[shots:] for v in views])
    if shift:
        images = apply_shift(images, shift, np.random.default_rng(seed))
    x = torch.from_numpy(preprocess(images, spec))
    n = ways * shots
    return Task(support_x=x[:n], support_y=torch.arange(ways).repeat_interleave(shots),
                query_x=x[n:], query_y=torch.arange(ways).repeat_interleave(queries), ways=ways,
                shift=shift, kind="instance")


def draw_task(ds: ImageDataset, rng: np.random.Generator, spec: Preprocess, *, episode: Episode,
              instance_fraction: float, shift: tuple[str, ...] = (),
              seed: int | list[int] = 0) -> Task:
    """With probability ``instance_fraction`` an instance task of ``episode``'s size (ways, shots,
    queries), else ``episode`` itself; ``shift`` applied either way (its parameters from ``seed``)."""
    ways = len(episode.classes)
    if rng.random() < instance_fraction:
        return make_instance_task(ds, rng, spec, ways=ways, shots=len(episode.support) // ways,
                                  queries=len(episode.query) // ways, shift=shift, seed=seed)
    return make_task(ds, episode, spec, shift=shift, seed=seed)
