"""Prototype classification in numpy: class means, their logits, softmax (the PyTorch formulas)."""

from __future__ import annotations

import numpy as np

from edgeflow.errors import BundleError


def prototypes(features: np.ndarray, episode_labels: np.ndarray, ways: int) -> np.ndarray:
    """Class means (W, D); the same one-hot matmul as :func:`edgeflow.adapt.prototypes`."""
    onehot = np.zeros((len(episode_labels), ways), dtype=features.dtype)
    onehot[np.arange(len(episode_labels)), episode_labels] = 1
    counts = np.maximum(onehot.sum(0), 1)
    return (onehot.T @ features) / counts[:, None]


def _normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    # torch.nn.functional.normalize: x / max(||x||, eps)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def prototype_logits(query: np.ndarray, protos: np.ndarray, *, metric: str = "cosine",
                     scale: float = 10.0) -> np.ndarray:
    """Scores (Q, W): scaled cosine similarity or negative squared Euclidean distance."""
    if metric == "cosine":
        return scale * (_normalize(query) @ _normalize(protos).T)
    if metric == "euclidean":
        return -np.sum((query[:, None, :] - protos[None, :, :]) ** 2, axis=-1)
    raise BundleError(f"unknown metric {metric!r} in the bundle; valid metrics: cosine, euclidean")


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
