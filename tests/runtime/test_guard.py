"""The forward-only guard: leave-one-out (and, at 1 shot, flipped-view) support scores, the
choice, and theta0 when all lose."""

from __future__ import annotations

import numpy as np
import pytest

from edgeflow.errors import DataError
from edgeflow.runtime import Session
from edgeflow.runtime.guard import choose, flip_score, flip_width, loo_score
from tests.export.helpers import CIFAR_PRE, cifar_test, episode, resnet20, small_drift


def test_loo_score_matches_a_hand_computation():
    feats = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.2, 0.8], [0.6, 0.4], [0.1, 0.9]],
                     np.float32)
    labels = np.array([0, 0, 0, 1, 1, 1])

    def sim(q, p):
        return -((q[:, None] - p[None]) ** 2).sum(-1)

    acc, logp = loo_score(feats, labels, 2, sim)
    right, lps = 0, []
    for i in range(6):
        protos = []
        for c in range(2):
            members = [j for j in range(6) if labels[j] == c and j != i]
            protos.append(feats[members].mean(0))
        logits = sim(feats[i:i + 1], np.stack(protos))[0]
        right += int(logits.argmax() == labels[i])
        lps.append(logits[labels[i]] - np.log(np.exp(logits).sum()))
    assert acc == pytest.approx(right / 6) and logp == pytest.approx(np.mean(lps), rel=1e-5)
    assert acc < 1.0  # image 2 ([0, 1]) sits nearer the other class once left out


def test_choose_keeps_theta0_unless_beaten():
    assert choose([("theta0", (0.8, -0.5)), ("recenter", (0.8, -0.5))]) == "theta0"
    assert choose([("theta0", (0.8, -0.5)), ("recenter", (0.8, -0.4)),
                   ("drift-5", (0.84, -0.9))]) == "drift-5"


def test_the_guard_picks_the_best_candidate_the_session_would_make(drift_bundle):
    """Its candidates are the Session's own thetas: re-centring alone is adapt(steps=0), the full
    drift is adapt(); the choice is the best leave-one-out score."""
    sx, sy, _, _ = episode(4)
    with Session(drift_bundle[0], backend="onnxruntime") as s:
        task = s.adapt(sx, sy, guard=True)
        report = task.info["guard"]
        assert set(report["scores"]) == {"theta0", "recenter", "drift-1", "drift-2", "drift-5"}
        best = max(report["scores"].items(), key=lambda kv: (kv[1]["loo_accuracy"], kv[1]["loo_logp"]))
        assert report["chosen"] == best[0] and task.info["mode"] == f"guard:{best[0]}"
        reference = {"theta0": s.theta0, "recenter": s.adapt(sx, sy, steps=0).theta,
                     "drift-5": s.adapt(sx, sy).theta}
        if report["chosen"] in reference:
            np.testing.assert_allclose(task.theta, reference[report["chosen"]], atol=1e-6)
        assert report["mode"] == "loo"


@pytest.mark.parametrize("shots,mode", [(5, "loo"), (1, "flip")])
def test_the_guard_keeps_theta0_when_every_candidate_loses(tmp_path, shots, mode):
    """A drift that wrecks the features (large random output layer): every move lowers the
    support set's score (leave-one-out; at 1 shot the flipped views'), so the guard keeps theta0
    where plain adapt moves."""
    import torch

    from edgeflow.adapt import IntegratorSettings, ThetaSpec
    from edgeflow.data import Preprocess
    from edgeflow.export import export_bundle

    torch.set_num_threads(1)
    model = resnet20()
    spec = ThetaSpec.from_model(model, max_size=512)
    export_bundle(model, output=tmp_path / "b", preprocess_spec=Preprocess(**CIFAR_PRE),
                  parity_images=cifar_test().images[:16], spec=spec,
                  drift=small_drift(spec, std=3.0), settings=IntegratorSettings(steps=4))
    sx, sy, _, _ = episode(1, shots=shots)
    with Session(tmp_path / "b", backend="onnxruntime") as s:
        task = s.adapt(sx, sy, guard=True)
        plain = s.adapt(sx, sy)
    report = task.info["guard"]
    assert report["mode"] == mode and report["chosen"] == "theta0"
    assert task.info["mode"] == "guard:theta0"
    assert np.array_equal(task.theta, s.theta0) and not np.allclose(plain.theta, s.theta0)
    key = {k: (v[f"{mode}_accuracy"], v[f"{mode}_logp"]) for k, v in report["scores"].items()}
    assert len(key) == 4 and all(v < key["theta0"] for k, v in key.items() if k != "theta0")
    # and strictly so in accuracy: the wrecked features are not a near tie that logp decides
    assert all(v[0] < key["theta0"][0] for k, v in key.items() if k != "theta0")


def test_flip_score_matches_a_hand_computation():
    """Each flipped view is a query against the originals' prototypes; 1 shot is fine."""
    feats = np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]], np.float32)
    views = np.array([[0.9, 0.2], [0.6, 0.5], [0.1, 0.9]], np.float32)
    labels = np.array([0, 1, 2])

    def sim(q, p):
        return 10 * (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (
            p / np.linalg.norm(p, axis=1, keepdims=True)).T

    acc, logp = flip_score(feats, views, labels, 3, sim)
    logits = sim(views, feats).astype(np.float64)  # 1 shot: the prototypes are the originals
    lp = logits[np.arange(3), labels] - np.log(np.exp(logits).sum(1))
    assert acc == pytest.approx(np.mean(logits.argmax(1) == labels)) and acc == pytest.approx(1 / 3)
    assert logp == pytest.approx(lp.mean(), rel=1e-6)


def test_flip_width_mirrors_the_last_axis_of_nchw():
    """The pseudo-queries are mirrored left to right: the width axis (last of N, C, H, W)."""
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)  # H != W
    y = flip_width(x)
    np.testing.assert_array_equal(y[:, :, :, 0], x[:, :, :, 4])
    assert not np.array_equal(y, x[:, :, ::-1, :]) and y.flags.c_contiguous


def test_flipping_the_preprocessed_images_is_mirroring_the_camera_images(drift_bundle):
    """flip_width of the Session's preprocessed tensor equals preprocessing the images mirrored
    left to right (uint8 (N, H, W, C): axis 2), not upside down; and it is what adapt feeds the
    prefix as the 1-shot guard's views."""
    sx, sy, _, _ = episode(3, shots=1)
    with Session(drift_bundle[0], backend="onnxruntime") as s:
        x = s.prepare(sx)
        np.testing.assert_allclose(flip_width(x), s.prepare(sx[:, :, ::-1]), atol=1e-6)
        assert not np.allclose(flip_width(x), s.prepare(sx[:, ::-1]), atol=1e-3)
        seen = []
        real = s.support_cache
        s.support_cache = lambda images: seen.append(images) or real(images)
        task = s.adapt(sx, sy, guard=True)
        s.support_cache = real
    assert len(seen) == 2 and np.array_equal(seen[1], flip_width(seen[0]))
    assert task.info["guard"]["mode"] == "flip"


def test_a_one_shot_session_guards_with_flipped_views(drift_bundle):
    """At 1 shot the guard scores every candidate with the flipped views (no "needs 2 shots");
    a task grown from its cache alone (update) has no views and keeps the bundle's move."""
    sx, sy, _, _ = episode(4, shots=1)
    with Session(drift_bundle[0], backend="onnxruntime") as s:
        task = s.adapt(sx, sy, guard=True)
        report = task.info["guard"]
        assert report["mode"] == "flip" and "why" not in report
        assert set(report["scores"]) == {"theta0", "recenter", "drift-1", "drift-2", "drift-5"}
        key = {k: v["flip_accuracy"] for k, v in report["scores"].items()}  # no tie-break
        assert report["chosen"] == max(key, key=lambda k: (key[k], k == "theta0"))
        assert task.info["mode"] == f"guard:{report['chosen']}"
        reference = {"theta0": s.theta0, "recenter": s.adapt(sx, sy, steps=0).theta,
                     "drift-5": s.adapt(sx, sy).theta}
        if report["chosen"] in reference:
            np.testing.assert_allclose(task.theta, reference[report["chosen"]], atol=1e-6)
        # adapt_support with the views' cache gives the same choice and scores
        views = s.support_cache(flip_width(s.prepare(sx)))
        again = s.adapt_support(task.support, guard=True, views=views)
        assert again.info["guard"] == report
        with pytest.raises(DataError, match="one row per image"):
            s.adapt_support(task.support, guard=True, views={k: v[:2] for k, v in views.items()})
        # the same cache without views: nothing to score with at 1 shot, the bundle's own move
        blind = s.adapt_support(task.support, guard=True)
        assert blind.info["guard"]["chosen"] is None and "views" in blind.info["guard"]["why"]
        assert blind.info["mode"] == "hyperflow"
