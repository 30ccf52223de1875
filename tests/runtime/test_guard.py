"""The forward-only guard: leave-one-out support scores, the choice, and theta0 when all lose."""

from __future__ import annotations

import numpy as np
import pytest

from edgeflow.runtime import Session
from edgeflow.runtime.guard import choose, loo_score
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
        few = s.adapt(*episode(4, shots=1)[:2], guard=True)  # 1 shot: no leave-one-out
        assert few.info["guard"]["chosen"] is None and few.info["mode"] == "hyperflow"


def test_the_guard_keeps_theta0_when_every_candidate_loses(tmp_path):
    """A drift that wrecks the features (large random output layer): every move lowers the
    support set's leave-one-out score, so the guard keeps theta0 where plain adapt moves."""
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
    sx, sy, _, _ = episode(1)
    with Session(tmp_path / "b", backend="onnxruntime") as s:
        task = s.adapt(sx, sy, guard=True)
        plain = s.adapt(sx, sy)
    scores = task.info["guard"]["scores"]
    assert task.info["guard"]["chosen"] == "theta0"
    assert np.array_equal(task.theta, s.theta0) and not np.allclose(plain.theta, s.theta0)
    assert all(v["loo_accuracy"] < scores["theta0"]["loo_accuracy"] or
               (v["loo_accuracy"], v["loo_logp"]) < (scores["theta0"]["loo_accuracy"],
                                                    scores["theta0"]["loo_logp"])
               for k, v in scores.items() if k != "theta0")
