"""The task encoder's shot path: it starts as a no-op, sees what prototypes cannot (the spread of
the shots), ignores padding and order, and the outcome loss trains it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgeflow.adapt import IntegratorSettings, prototypes
from edgeflow.adapt.drift import DriftConfig, DriftNet
from edgeflow.adapt.outcome import outcome_drift, query_loss
from tests.adapt.test_outcome import _setup, _task
from tests.export.helpers import small_drift


def _drift(*, live: bool = True) -> DriftNet:
    torch.manual_seed(0)
    drift = DriftNet(DriftConfig(theta_dim=8, feature_dim=16, hidden=32, task_dim=32,
                                 encoder_layers=1, shot_tokens=True)).eval()
    if live:  # off zero, so the shots change z
        torch.nn.init.normal_(drift.task_encoder.shots.out.weight, std=0.5)
    return drift


def _support(seed: int, *, ways: int = 3, shots: int = 4, spread: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(ways, 16, generator=g)
    labels = torch.arange(ways).repeat(shots)
    return centres[labels] + spread * torch.randn(len(labels), 16, generator=g), labels


def test_a_fresh_shot_path_adds_nothing():
    drift = _drift(live=False)
    feats, labels = _support(0)
    with torch.no_grad():
        protos = torch.stack([feats[labels == c].mean(0) for c in range(3)])[None]
        torch.testing.assert_close(drift.embed_support(feats, labels, 3), drift.embed_task(protos))


def test_shots_carry_the_spread_prototypes_cannot():
    """Two support sets with the same prototypes and different spreads: a prototypes-only encoder
    gives them the same z, the shot path does not."""
    drift = _drift()
    feats, labels = _support(1)
    protos = torch.stack([feats[labels == c].mean(0) for c in range(3)])
    wide = protos[labels] + 3.0 * (feats - protos[labels])  # same class means, 3x the spread
    torch.testing.assert_close(prototypes(wide, labels, 3), protos)  # what the old encoder reads
    with torch.no_grad():
        z, z_wide = drift.embed_support(feats, labels, 3), drift.embed_support(wide, labels, 3)
    assert (z - z_wide).abs().max() > 1e-3


def test_the_shot_path_ignores_order_and_padding():
    drift = _drift()
    feats, labels = _support(2)
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        z = drift.embed_support(feats, labels, 3)
        torch.testing.assert_close(drift.embed_support(feats[perm], labels[perm], 3), z)
        protos = torch.stack([feats[labels == c].mean(0) for c in range(3)])[None]
        onehot = F.one_hot(labels, 3).float()
        padded = torch.cat([feats, 1e3 * torch.ones(5, 16)])[None]  # 5 padding rows of garbage
        pad_labels = torch.cat([onehot, torch.zeros(5, 3)])[None]
        torch.testing.assert_close(drift.embed_task(protos, shots=padded, shot_labels=pad_labels),
                                   z)


def test_the_outcome_loss_trains_the_shot_path():
    model, spec, split = _setup()
    drift = outcome_drift(small_drift(spec), split, feature_dim=64, recenter_init=0.5,
                          shot_tokens=True)
    s, sy, q, qy = _task(split, 0)
    loss, _ = query_loss(split, drift, s, sy, q, qy, 5, spec.get(model),
                         settings=IntegratorSettings(steps=2))
    loss.backward()
    out = drift.task_encoder.shots.out.weight  # zero at the start: its gradient is the way in
    assert out.grad is not None and out.grad.abs().sum() > 0


def test_a_shot_token_drift_warm_starts_exactly():
    """Adding the shot path to the warm drift changes no theta before training."""
    from edgeflow.adapt.loop import drift_theta

    model, spec, split = _setup()
    warm = small_drift(spec)
    plain = outcome_drift(warm, split, feature_dim=64, recenter_init=0.5).eval()
    shots = outcome_drift(warm, split, feature_dim=64, recenter_init=0.5, shot_tokens=True).eval()
    assert shots.config.shot_tokens and not plain.config.shot_tokens
    s, sy, _, _ = _task(split, 1)
    with torch.no_grad():
        a, b = (drift_theta(split, d, s, sy, 5, spec.get(model), settings=IntegratorSettings(
            steps=3)) for d in (plain, shots))
    torch.testing.assert_close(a, b)
