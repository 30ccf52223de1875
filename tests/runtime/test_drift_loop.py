"""The outcome drift on the device: statistics input, open and closed loop, equal to PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeflow.adapt import IntegratorSettings, ThetaSpec
from edgeflow.adapt.apply import hyperflow_adapt
from edgeflow.adapt.drift import DriftConfig, DriftNet
from edgeflow.adapt.signals import stats_dim
from edgeflow.runtime import Session
from tests.export.helpers import CIFAR_PRE, as_float, cifar_test, episode, resnet20


def stats_drift(spec: ThetaSpec, *, feature_dim: int = 64, seed: int = 0) -> DriftNet:
    """A drift reading statistics, with random (not zero) output, statistics and gain weights."""
    torch.manual_seed(seed)
    drift = DriftNet(DriftConfig(theta_dim=spec.size, feature_dim=feature_dim, hidden=64,
                                 task_dim=32, heads=4, encoder_layers=1, blocks=2,
                                 stats_dim=stats_dim(spec.size), layer_sizes=spec.sizes))
    vn = drift.velocity_net
    for p in (vn.out.weight, vn.out.bias, vn.stats_in.weight):
        torch.nn.init.normal_(p, std=0.05)
    with torch.no_grad():
        vn.layer_gain.copy_(-torch.linspace(0.2, 0.8, len(spec.sizes)))
        vn.stats_scale.fill_(2.0)
    return drift.eval()


def drift_bundle(out, make_drift, *, settings: IntegratorSettings):
    """(bundle path, model, spec, drift) of ResNet-20 with ``make_drift(spec)``, exported to out."""
    from edgeflow.data import Preprocess
    from edgeflow.export import export_bundle

    torch.set_num_threads(1)
    model = resnet20()
    spec = ThetaSpec.from_model(model, max_size=256)
    drift = make_drift(spec)
    export_bundle(model, output=out, preprocess_spec=Preprocess(**CIFAR_PRE),
                  parity_images=cifar_test().images[:16], spec=spec, drift=drift,
                  settings=settings)
    return out, model, spec, drift


@pytest.fixture(scope="module")
def stats_bundle(tmp_path_factory):
    # as the compile writes an outcome drift's: no re-centring of its own (the drift re-centres
    # inside), and the guard's re-centring-alone candidate at val's best strength
    settings = IntegratorSettings(steps=4, loop_every=2, guard_recenter=0.75)
    return (*drift_bundle(tmp_path_factory.mktemp("stats") / "b", stats_drift,
                          settings=settings), settings)


@pytest.mark.parametrize("loop_every", [2, 0, 1])
def test_runtime_equals_pytorch_open_and_closed_loop(stats_bundle, loop_every):
    out, model, spec, drift, settings = stats_bundle
    sx, sy, _, _ = episode(2)
    settings = IntegratorSettings(steps=4, loop_every=loop_every)
    ref = hyperflow_adapt(model, spec, drift, torch.from_numpy(as_float(sx)),
                          torch.as_tensor(sy), 5, settings=settings).numpy()
    with Session(out, backend="onnxruntime") as s:
        assert s.drift_stats and s.loop_every == 2  # what the manifest says
        s.loop_every = loop_every
        task = s.adapt(sx, sy)
    assert task.info["mode"] == "hyperflow"
    assert np.abs(ref - spec.get(model).numpy()).max() > 1e-2  # the drift really moved theta
    np.testing.assert_allclose(task.theta, ref, atol=2e-4)


def test_closed_loop_differs_from_open_loop(stats_bundle):
    """Re-reading the support set changes the path (else the closed loop would be a no-op)."""
    _, model, spec, drift, _ = stats_bundle
    x, y = torch.from_numpy(as_float(episode(3)[0])), torch.as_tensor(episode(3)[1])
    thetas = [hyperflow_adapt(model, spec, drift, x, y, 5,
                              settings=IntegratorSettings(steps=4, loop_every=r)) for r in (0, 1)]
    assert (thetas[0] - thetas[1]).abs().max() > 1e-4


def test_the_guard_follows_the_bundles_closed_loop_path(stats_bundle):
    """The guard's candidates are points of the bundle's own closed-loop path (PyTorch's), and
    re-centring alone at the manifest's guard_recenter, which plain adapt does not apply."""
    from edgeflow.adapt.loop import drift_path
    from edgeflow.adapt.recenter import recentered, theta_means
    from edgeflow.adapt.split import SplitFeatures

    _, model, spec, drift, settings = stats_bundle
    sx, sy, _, _ = episode(4)
    split = SplitFeatures(model, spec)
    theta0 = spec.get(model)
    with torch.no_grad():
        cache = split.prefix(torch.from_numpy(as_float(sx)))
        path = drift_path(split, drift, cache, torch.as_tensor(sy), 5, theta0, settings=settings)
        alone = recentered(theta0, theta_means(split, cache, theta0), alpha=0.75)
    ref = {"theta0": path[0], "recenter": alone, "drift-2": path[2], "drift-4": path[4]}
    with Session(stats_bundle[0], backend="onnxruntime") as s:
        task = s.adapt(sx, sy, guard=[2, 4])
        plain = s.adapt(sx, sy)
        # every candidate's theta, not only the chosen one's
        from edgeflow.runtime.guard import candidates

        cache = s.support_cache(s.prepare(sx))
        feats0, means = s._suffix(cache, s.theta0, "features", "theta_means")
        got = {c.name: c.theta for c in candidates(s, cache, np.asarray(sy), 5, feats0, means,
                                                     None, [2, 4])}
    assert set(got) == set(ref)
    for name, theta in got.items():
        np.testing.assert_allclose(theta, ref[name].numpy(), atol=2e-4, err_msg=name)
    report = task.info["guard"]
    assert set(report["scores"]) == set(ref)
    best = max(report["scores"].items(), key=lambda kv: (kv[1]["loo_accuracy"], kv[1]["loo_logp"]))
    assert report["chosen"] == best[0]
    np.testing.assert_allclose(task.theta, ref[report["chosen"]].numpy(), atol=2e-4)
    np.testing.assert_allclose(plain.theta, path[4].numpy(), atol=2e-4)
    assert plain.info["loop_every"] == 2


def test_pytorch_guard_makes_the_runtimes_choice(stats_bundle):
    """The evaluation harness's guard (PyTorch) and the device's choose the same candidate and
    theta, and score them the same, on several episodes."""
    from edgeflow.adapt.guard import guard_theta
    from edgeflow.adapt.split import SplitFeatures

    _, model, spec, drift, settings = stats_bundle
    split = SplitFeatures(model, spec)
    with Session(stats_bundle[0], backend="onnxruntime") as s:
        for i in (5, 6, 7):
            sx, sy, _, _ = episode(i, shots=3)
            task = s.adapt(sx, sy, guard=True)
            theta, ref = guard_theta(
                split, drift, split.prefix(torch.from_numpy(as_float(sx))), torch.as_tensor(sy),
                5, spec.get(model), settings=settings)
            assert_same_guard(task, theta, ref, "loo")
            assert "recenter" in ref["scores"]


def assert_same_guard(task, theta: torch.Tensor, ref: dict, mode: str) -> None:
    """The device's guard report and theta equal PyTorch's (scores to 1e-4)."""
    report = task.info["guard"]
    assert report["mode"] == ref["mode"] == mode and ref["chosen"] == report["chosen"]
    assert set(ref["scores"]) == set(report["scores"])
    for name, score in ref["scores"].items():
        for k in (f"{mode}_accuracy", f"{mode}_logp"):
            assert score[k] == pytest.approx(report["scores"][name][k], abs=1e-4)
    np.testing.assert_allclose(task.theta, theta.numpy(), atol=2e-4)


def test_pytorch_guard_makes_the_runtimes_choice_at_one_shot(stats_bundle):
    """At 1 shot both guards score with the flipped views (the harness's TaskCache views, the
    device's flip_width): the same choice, scores and theta, on several episodes."""
    from edgeflow.adapt.guard import guard_theta
    from edgeflow.adapt.split import SplitFeatures, TaskCache

    _, model, spec, drift, settings = stats_bundle
    split = SplitFeatures(model, spec)
    chosen = set()
    with Session(stats_bundle[0], backend="onnxruntime") as s:
        # every candidate's scores are compared, moves included; the chosen theta is theta0 here
        # (accuracy alone decides at 1 shot, and these flipped views are all classified right at
        # theta0); the candidates' thetas come from the code the loo mode uses
        for i in (5, 8, 9, 10):
            sx, sy, qx, qy = episode(i, shots=1)
            task = s.adapt(sx, sy, guard=True)
            x, y = torch.from_numpy(as_float(sx)), torch.as_tensor(sy)
            tc = TaskCache(split, x, y, torch.from_numpy(as_float(qx)), torch.as_tensor(qy), 5)
            theta, ref = guard_theta(split, drift, tc.support_only, y, 5, spec.get(model),
                                     settings=settings, views=tc.views)
            assert_same_guard(task, theta, ref, "flip")
            # guard_recenter's candidate is scored leave-one-out only
            assert "recenter" not in ref["scores"]
            chosen.add(ref["chosen"])
            # without views PyTorch keeps the settings' own move, as the device does
            own, blind = guard_theta(split, drift, tc.support_only, y, 5, spec.get(model),
                                     settings=settings)
            assert blind["chosen"] is None
            np.testing.assert_allclose(own.numpy(), s.adapt(sx, sy).theta, atol=2e-4)
    assert chosen == {"theta0"}
