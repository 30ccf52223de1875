"""Outcome meta-training: the query loss after adaptation reaches every part of the drift, and
on a problem whose best theta is known, training moves adaptation there."""

from __future__ import annotations

import torch
from torch import nn

from edgeflow.adapt import IntegratorSettings, ThetaSpec
from edgeflow.adapt.outcome import OutcomeConfig, outcome_drift, perturb_statistics, query_loss
from edgeflow.adapt.split import SplitFeatures
from edgeflow.models.base import Backbone
from tests.export.helpers import as_float, episode, resnet20, small_drift


def _task(split, i, *, shots=5):
    sx, sy, qx, qy = episode(i, shots=shots)
    return (split.prefix(torch.from_numpy(as_float(sx))), torch.as_tensor(sy),
            split.prefix(torch.from_numpy(as_float(qx))), torch.as_tensor(qy))


def _setup():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = resnet20().requires_grad_(False)  # as meta_train_outcome freezes it
    spec = ThetaSpec.from_model(model, max_size=64)
    return model, spec, SplitFeatures(model, spec)


def test_the_query_loss_reaches_every_part_of_the_drift():
    model, spec, split = _setup()
    warm = small_drift(spec)
    drift = outcome_drift(warm, split, feature_dim=64, recenter_init=0.5)
    with torch.no_grad():  # off zero, so gradients reach the layers before them
        torch.nn.init.normal_(drift.velocity_net.stats_in.weight, std=0.01)
    s, sy, q, qy = _task(split, 0)
    loss, _ = query_loss(split, drift, s, sy, q, qy, 5, spec.get(model),
                         settings=IntegratorSettings(steps=3, loop_every=1))
    loss.backward()
    groups = {"task encoder": drift.task_encoder.inp[1].weight,
              "velocity output": drift.velocity_net.out.weight,
              "statistics input": drift.velocity_net.stats_in.weight,
              "per-layer gain": drift.velocity_net.layer_gain}
    for name, p in groups.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_warm_start_is_the_warm_drift_plus_recentring():
    """The new inputs start at zero: the velocity is the warm drift's plus the gain's re-centring
    term, and with an untrained (zero) warm drift the adaptation is re-centring at alpha."""
    from edgeflow.adapt.drift import DriftConfig, DriftNet
    from edgeflow.adapt.loop import drift_theta
    from edgeflow.adapt.signals import stats_dim

    model, spec, split = _setup()
    warm = small_drift(spec)
    drift = outcome_drift(warm, split, feature_dim=64, recenter_init=0.5).eval()
    g = torch.Generator().manual_seed(0)
    theta, z = torch.randn(3, spec.size, generator=g), torch.randn(3, 32, generator=g)
    stats = torch.randn(3, stats_dim(spec.size), generator=g)
    with torch.no_grad():
        got = drift.velocity(theta, 0.3, z, stats)
        ref = warm.velocity(theta, 0.3, z) - 0.5 * stats[:, :spec.size]
    torch.testing.assert_close(got, ref)
    zero = DriftNet(DriftConfig(theta_dim=spec.size, feature_dim=64, hidden=64, task_dim=32))
    drift = outcome_drift(zero, split, feature_dim=64, recenter_init=0.5).eval()
    s, sy, _, _ = _task(split, 1)
    theta0 = spec.get(model)
    with torch.no_grad():
        recentred = drift_theta(split, None, s, sy, 5, theta0,
                                settings=IntegratorSettings(steps=0, recenter=0.5))
        got = drift_theta(split, drift, s, sy, 5, theta0, settings=IntegratorSettings(steps=4))
    assert (recentred - theta0).abs().max() > 1e-3
    torch.testing.assert_close(got, recentred, atol=1e-5, rtol=1e-5)


class _Toy(Backbone):
    """One BatchNorm (theta = its 6 shifts) -> ELU -> mean: a backbone whose best theta is known."""

    feature_dim, in_channels, input_size = 6, 6, 2

    def __init__(self) -> None:
        super().__init__()
        self.bn, self.act, self.classifier = nn.BatchNorm2d(6), nn.ELU(), nn.Linear(6, 2)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(x)).mean((2, 3))


def _toy_task(g: torch.Generator, *, ways: int = 5, n: int = 5):
    """Class c lights channel c at -2 over a floor of -4, noise 1: at theta0 (0) ELU squashes
    everything into its flat negative part; a shift above +2 brings the class channel into ELU's
    linear part, where the classes separate."""
    cls = torch.randperm(6, generator=g)[:ways]

    def images():
        y = torch.arange(ways).repeat_interleave(n)
        x = torch.full((len(y), 6, 2, 2), -4.0)
        x[torch.arange(len(y)), cls[y]] = -2.0
        return x + torch.randn(x.shape, generator=g), y
    return images(), images()


def test_training_on_the_outcome_finds_the_known_best_theta():
    """Trained on the query loss alone (no teacher), the drift learns to shift every channel past
    +2 on tasks it never saw, and accuracy rises from what theta0 gives."""
    from edgeflow.adapt.loop import drift_theta

    torch.manual_seed(0)
    model = _Toy().eval().requires_grad_(False)
    spec = ThetaSpec.from_model(model)
    split, theta0 = SplitFeatures(model, spec), spec.get(model)
    drift = outcome_drift(None, split, feature_dim=6, hidden=32, task_dim=16)
    settings = IntegratorSettings(steps=2)
    opt = torch.optim.Adam(drift.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(80):
        (sx, sy), (qx, qy) = _toy_task(g)
        loss, _ = query_loss(split, drift, split.prefix(sx), sy, split.prefix(qx), qy, 5, theta0,
                             settings=settings)
        opt.zero_grad()
        loss.backward()
        opt.step()
    held_out = torch.Generator().manual_seed(99)
    before, after = [], []
    with torch.no_grad():
        for _ in range(20):
            (sx, sy), (qx, qy) = _toy_task(held_out)
            s, q = split.prefix(sx), split.prefix(qx)
            theta = drift_theta(split, drift, s, sy, 5, theta0, settings=settings)
            assert theta.min() > 2.0, theta
            after.append(query_loss(split, drift, s, sy, q, qy, 5, theta0, settings=settings)[1])
            before.append(query_loss(split, drift, s, sy, q, qy, 5, theta0,
                                     settings=IntegratorSettings(steps=0))[1])
    assert sum(after) / 20 > sum(before) / 20 + 0.05


def test_feature_statistics_perturbation_moves_channel_statistics_per_task():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 8, 5, 5) * 2 + 1
    (y,) = perturb_statistics((x,), g, strength=1.0)
    assert y.shape == x.shape and not torch.allclose(y.mean((0, 2, 3)), x.mean((0, 2, 3)))
    # every image of the task moves by the same channel shift: the within-task spread is kept
    assert torch.allclose((y.mean((2, 3)) - x.mean((2, 3))).std(0), torch.zeros(8), atol=0.6)
    (same,) = perturb_statistics((x,), g, strength=0.0)
    assert torch.equal(same, x)
    (one,) = perturb_statistics((torch.randn(6, 8, 1, 1),), g, strength=1.0)  # 1x1 maps
    assert torch.isfinite(one).all()
    flat = torch.randn(4, 8)
    assert perturb_statistics((flat,), g, strength=1.0)[0] is flat  # only 4-D activations


def test_outcome_config_is_the_devices_integrator():
    cfg = OutcomeConfig(euler_steps=3, loop_every=1)
    assert cfg.settings == IntegratorSettings(steps=3, loop_every=1)


def test_damping_scales_the_whole_velocity():
    """What outcome selection falls back to when nothing does no harm in-domain: the velocity
    (network output and re-centring term) times a factor; 0 moves nothing."""
    from edgeflow.adapt.outcome import damp
    from edgeflow.adapt.signals import stats_dim

    _, spec, split = _setup()
    drift = outcome_drift(small_drift(spec), split, feature_dim=64, recenter_init=0.5).eval()
    g = torch.Generator().manual_seed(1)
    theta, z = torch.randn(2, spec.size, generator=g), torch.randn(2, 32, generator=g)
    stats = torch.randn(2, stats_dim(spec.size), generator=g)
    with torch.no_grad():
        full = drift.velocity(theta, 0.2, z, stats)
        damp(drift, 0.5)
        torch.testing.assert_close(drift.velocity(theta, 0.2, z, stats), 0.5 * full)
        damp(drift, 0.0)
        assert drift.velocity(theta, 0.2, z, stats).abs().max() == 0
