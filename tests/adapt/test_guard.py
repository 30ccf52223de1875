"""The PyTorch guard's 1-shot pieces: the views are the width-flipped images, the flip score."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeflow.adapt.guard import flip_score
from edgeflow.adapt.signals import loo_score, query_score
from edgeflow.runtime.guard import flip_score as np_flip_score
from edgeflow.runtime.guard import flip_width
from edgeflow.runtime.protos import prototype_logits


def test_flip_score_equals_the_devices():
    g = torch.Generator().manual_seed(0)
    feats, views = torch.randn(10, 16, generator=g), torch.randn(10, 16, generator=g)
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3, 4])[:5].repeat(2)
    for shots in (1, 2):
        n = 5 * shots
        ref = np_flip_score(feats[:n].numpy(), views[:n].numpy(), labels[:n].numpy(), 5,
                            lambda q, p: prototype_logits(q, p, scale=10.0))
        got = flip_score(feats[:n], views[:n], labels[:n], 5)
        assert got[0] == pytest.approx(ref[0]) and got[1] == pytest.approx(ref[1], abs=1e-5)


def test_loo_score_is_query_score_of_the_loo_logits():
    """One log-probability formula: loo_score goes through query_score."""
    from edgeflow.adapt.signals import loo_logits

    g = torch.Generator().manual_seed(1)
    feats, labels = torch.randn(10, 8, generator=g), torch.arange(5).repeat(2)
    assert loo_score(feats, labels, 5) == query_score(loo_logits(feats, labels, 5), labels)


def test_task_cache_views_are_the_width_flipped_images():
    """TaskCache's views (what the harness's 1-shot guard scores with) are the prefix of
    x.flip(3), i.e. the device's flip_width, and not an upside-down flip."""
    from edgeflow.adapt.split import TaskCache

    class Identity:  # prefix = the images themselves, to look at the views directly
        @staticmethod
        def prefix(x):
            return (x,)

    x = torch.arange(5 * 3 * 4 * 6, dtype=torch.float32).reshape(5, 3, 4, 6)
    tc = TaskCache(Identity(), x, torch.arange(5), x[:1], torch.zeros(1, dtype=torch.long), 5)
    assert tc.shots == 1 and len(tc.support_only[0]) == 5
    np.testing.assert_array_equal(tc.views[0].numpy(), flip_width(x.numpy()))
    assert not torch.equal(tc.views[0], x.flip(2))
    two = TaskCache(Identity(), x.repeat(2, 1, 1, 1), torch.arange(5).repeat(2), x[:1],
                    torch.zeros(1, dtype=torch.long), 5)
    assert two.views is None  # no views by default at 2 shots


def test_the_harness_guard_scores_one_shot_tasks_with_their_views(digits_backbone, monkeypatch):
    """evaluate's ``hyperflow-guard`` at 1 shot (end to end, no shared cache) builds the flipped
    views and the guard scores with them (mode "flip"); at 2 shots it stays leave-one-out."""
    import edgeflow.adapt.guard as guard
    from edgeflow.adapt import IntegratorSettings, ThetaSpec
    from edgeflow.adapt.evaluate import Adapter
    from edgeflow.adapt.tasks import make_task
    from edgeflow.adapt.teacher import TeacherConfig
    from edgeflow.data import EpisodeSampler, Preprocess, load_dataset

    _, net = digits_backbone
    spec = ThetaSpec.from_model(net, max_size=64)
    adapter = Adapter(net, spec, theta0=spec.get(net), drift=None,
                      settings=IntegratorSettings(steps=0, recenter=0.5), teacher=TeacherConfig())
    reports = []
    real = guard.guard_theta
    monkeypatch.setattr(guard, "guard_theta",
                        lambda *a, **k: reports.append(real(*a, **k)[1]) or real(*a, **k))
    ds = load_dataset("digits")
    for shots in (1, 2):
        ep = EpisodeSampler(ds.labels, ways=5, shots=shots, queries=5, seed=0).episode(0)
        acc = adapter.run("hyperflow-guard", make_task(ds, ep, Preprocess(size=16, channels=3)))
        assert 0.0 <= acc <= 1.0
    assert [r["mode"] for r in reports] == ["flip", "loo"]
    assert all(set(r["scores"]) == {"theta0", "recenter"} for r in reports)
