"""The support statistics the outcome drift reads: PyTorch and the device's numpy agree, and they
mean what they say."""

from __future__ import annotations

import numpy as np
import torch

from edgeflow.adapt.signals import loo_logits, stats_dim, support_stats
from edgeflow.runtime import protos as np_protos
from edgeflow.runtime import signals as np_signals


def _support(shots: int, seed: int = 0):
    g = np.random.default_rng(seed)
    labels = np.repeat(np.arange(4), shots)
    feats = (g.normal(size=(len(labels), 16)) + labels[:, None] * 0.3).astype(np.float32)
    means = g.normal(size=(len(labels), 10)).astype(np.float32) + 2.0
    theta = g.normal(size=10).astype(np.float32)
    return feats, means, labels, theta


def test_torch_and_numpy_statistics_agree():
    for shots in (1, 2, 5):
        f, m, y, th = _support(shots, seed=shots)
        ref = support_stats(torch.from_numpy(f), torch.from_numpy(m), torch.from_numpy(y), 4,
                            torch.from_numpy(th)).numpy()
        got = np_signals.support_stats(f, m, y, 4, th)
        assert ref.shape == got.shape == (stats_dim(10),)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_statistics_mean_what_they_say():
    f, m, y, th = _support(5)
    s = np_signals.support_stats(f, m, y, 4, th)
    np.testing.assert_allclose(s[:10], m.mean(0) - th, rtol=1e-5)  # what re-centring reads
    class_means = np.stack([m[y == c].mean(0) for c in range(4)])
    np.testing.assert_allclose(s[20:30], class_means.std(0), rtol=1e-5)
    within = np.sqrt(np.mean([m[y == c].var(0, ddof=1) for c in range(4)], axis=0))
    np.testing.assert_allclose(s[10:20], within, rtol=1e-5)
    assert s[-1] == 1.0 and 0.0 <= s[-3] <= 1.0 and s[-2] < 0.0
    one = np_signals.support_stats(*_support(1)[:3], 4, th)
    assert np.all(one[-3:] == 0.0) and np.all(one[10:20] == 0.0)  # no leave-one-out at 1 shot


def test_torch_leave_one_out_equals_the_runtime_formula():
    f, _, y, _ = _support(3)
    ref = np_protos.loo_logits(f, y, 4, lambda q, p: np_protos.prototype_logits(q, p))
    got = loo_logits(torch.from_numpy(f), torch.from_numpy(y), 4).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
