"""The support statistics the outcome-trained drift reads, in numpy (the device's copy of
:mod:`edgeflow.adapt.signals`; a test holds the two together).

``support_stats(features, means, labels, ways, theta)`` -> (3P + 3,) float32: mean drift of the
theta layers' outputs from theta, within- and between-class spread of those means, and the
leave-one-out accuracy, mean log-probability and a 1 (all 0 when a class has one shot).
``recenter_move`` is re-centring's one formula on the device.
"""

from __future__ import annotations

import numpy as np

from edgeflow.runtime.protos import loo_logits, prototype_logits


def recenter_move(theta0: np.ndarray, means: np.ndarray, *, alpha: float) -> np.ndarray:
    """The re-centring move ``-alpha * (mean - theta0)`` for the support images' theta-layer means
    ``means`` (N, P): :func:`edgeflow.adapt.recenter.recenter_move`, added to any theta."""
    return -alpha * (means.mean(0) - theta0)


def support_stats(features: np.ndarray, means: np.ndarray, labels: np.ndarray, ways: int,
                  theta: np.ndarray, *, scale: float = 10.0) -> np.ndarray:
    """The statistics vector of one support set (see :mod:`edgeflow.adapt.signals`)."""
    features = np.asarray(features, np.float32)
    m = means.astype(np.float64)
    onehot = np.eye(ways, dtype=np.float64)[labels]
    counts = onehot.sum(0)
    cmeans = (onehot.T @ m) / counts[:, None]
    drift = m.mean(0) - theta.astype(np.float64)
    within = (onehot.T @ (m - cmeans[labels]) ** 2) / np.maximum(counts - 1, 1)[:, None]
    within = np.sqrt(within.mean(0))
    between = np.sqrt(((cmeans - cmeans.mean(0)) ** 2).mean(0))
    loo = np.zeros(3)
    if counts.min() >= 2:
        logits = loo_logits(features, labels, ways,
                            lambda q, p: prototype_logits(q, p, metric="cosine", scale=scale))
        z = logits - logits.max(1, keepdims=True)
        logp = z[np.arange(len(labels)), labels] - np.log(np.exp(z).sum(1))
        loo = np.array([np.mean(logits.argmax(1) == labels), logp.mean(), 1.0])
    return np.concatenate([drift, within, between, loo]).astype(np.float32)
