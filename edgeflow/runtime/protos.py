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


def loo_logits(features: np.ndarray, labels: np.ndarray, ways: int, similarity) -> np.ndarray:
    """Logits (N, W) of support images against the prototypes, their own class's column taken
    against the mean of that class's *other* shots (leave-one-out). Every class needs 2 shots."""
    onehot = np.eye(ways, dtype=np.float64)[labels]
    sums, counts = onehot.T @ features.astype(np.float64), onehot.sum(0)
    logits = similarity(features, (sums / counts[:, None]).astype(np.float32)).astype(np.float64)
    own = ((sums[labels] - features) / (counts[labels] - 1)[:, None]).astype(np.float32)
    for i, c in enumerate(labels):
        logits[i, c] = similarity(features[i:i + 1], own[i:i + 1])[0, 0]
    return logits
