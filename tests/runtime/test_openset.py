"""Open-set rejection: known answers on real images, and the statistics against a hand computation."""

from __future__ import annotations

import numpy as np
import pytest

from edgeflow.errors import ConfigError, DataError
from edgeflow.runtime import Session
from edgeflow.runtime.openset import fit
from edgeflow.runtime.session import UNKNOWN
from tests.conftest import shared_file
from tests.export.helpers import episode


def test_leave_one_out_scores_match_a_hand_computation():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(6, 4)).astype(np.float32)
    labels = np.array([0, 0, 0, 1, 1, 1])
    protos = np.stack([feats[:3].mean(0), feats[3:].mean(0)])

    def sim(q, p):  # negative squared distance, as the euclidean metric
        return -((q[:, None] - p[None]) ** 2).sum(-1)

    stats = fit(feats, labels, 2, sim)
    for i in range(6):
        own = labels[i]
        rest = [j for j in range(6) if labels[j] == own and j != i]
        loo = sim(feats[i:i + 1], feats[rest].mean(0, keepdims=True))[0, 0]
        other = sim(feats[i:i + 1], protos[1 - own:2 - own])[0, 0]
        assert stats.loo_scores[i] == pytest.approx(max(loo, other), rel=1e-5)
    assert stats.threshold(1.0) == pytest.approx(stats.loo_scores.min())
    from edgeflow.runtime.openset import LOO_MISS_FACTOR

    want = np.quantile(stats.loo_scores, LOO_MISS_FACTOR * 0.1)
    assert stats.threshold(0.9) == pytest.approx(want)
    with pytest.raises(ConfigError, match="recall"):
        stats.threshold(1.5)


def test_known_queries_are_kept_and_far_away_ones_rejected(drift_bundle):
    """Support: 5 CIFAR-10 classes x 5 shots. Queries of those classes are mostly kept at a 95%
    target; MNIST digits and uniform noise, which the network never saw, are mostly rejected."""
    from edgeflow.data import load_dataset

    digits = load_dataset(shared_file("data/mnist/test.zip"), mode="RGB", size=32, limit=100).images
    noise = np.random.default_rng(0).integers(0, 256, size=(100, 32, 32, 3), dtype=np.uint8)
    kept, rejected_digits, rejected_noise = [], [], []
    with Session(drift_bundle[0], backend="onnxruntime") as s:
        for i in range(6):
            sx, sy, qx, _ = episode(i)
            task = s.adapt(sx, sy)
            labels, _ = s.predict(qx, task, reject=0.95)
            plain, _ = s.predict(qx, task)
            assert np.all((labels == UNKNOWN) | (labels == plain))  # rejection only says "unknown"
            kept.append(np.mean(labels != UNKNOWN))
            rejected_digits.append(np.mean(s.predict(digits, task, reject=0.95)[0] == UNKNOWN))
            rejected_noise.append(np.mean(s.predict(noise, task, reject=0.95)[0] == UNKNOWN))
            # every known query kept at recall 1.0 would need scores >= the lowest support score
            scores = s.known_scores(qx, task)
            assert np.array_equal(s.predict(qx, task, reject=1.0)[0] == UNKNOWN,
                                  scores < task.openset.loo_scores.min())
    assert np.mean(kept) >= 0.8, kept
    assert np.mean(rejected_noise) >= 0.9, rejected_noise
    # digits are nearer than noise (about half rejected here), but far more often than known queries
    assert np.mean(rejected_digits) > 3 * (1 - np.mean(kept)), (rejected_digits, kept)


def test_a_one_class_task_can_reject(plain_bundle):
    """A robot taught one object ("my mug", 5 shots) can still say "not my mug": over 15 such
    tasks, most of its own queries kept and most of the other classes' rejected."""
    mine, others = [], []
    with Session(plain_bundle[0], backend="onnxruntime") as s:
        for e in range(3):
            sx, sy, qx, qy = episode(e)
            for c in range(5):
                with pytest.raises(DataError, match="only one class"):
                    s.adapt(sx[sy == c], sy[sy == c])
                task = s.adapt(sx[sy == c], sy[sy == c], one_class=True)
                with pytest.raises(DataError, match="one-class task"):
                    s.predict(qx, task)
                labels, scores = s.predict(qx, task, reject=0.95)
                assert task.ways == 1 and np.allclose(scores, 1.0)
                mine.append(np.mean(labels[qy == c] == c))
                others.append(np.mean(labels[qy != c] == UNKNOWN))
    assert np.mean(mine) >= 0.65 and np.mean(others) >= 0.75, (np.mean(mine), np.mean(others))
