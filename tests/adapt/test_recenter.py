"""Re-centring: exact on the first theta layer, no move without BatchNorm, and its selection."""

import pytest
import torch

from edgeflow.adapt import ThetaSpec
from edgeflow.adapt.apply import IntegratorSettings
from edgeflow.adapt.recenter import (
    best_alone,
    recenter_layers,
    recentered,
    support_pass,
    theta_means,
)
from edgeflow.adapt.split import SplitFeatures
from edgeflow.errors import ConfigError
from edgeflow.models import create_model


def _model_with_shifted_statistics(seed: int = 0):
    torch.manual_seed(seed)
    model = create_model("conv4", num_classes=5, width=8).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # a "new domain": running stats far from the data
            m.running_mean.normal_(0.0, 1.0)
            m.running_var.uniform_(0.5, 2.0)
            m.bias.data.normal_(0.0, 0.5)
    return model


def test_alpha_one_restores_the_training_mean_of_the_first_theta_layer():
    model = _model_with_shifted_statistics()
    spec = ThetaSpec.from_model(model, max_size=24)  # the last layers: 8 + 16 shifts
    split = SplitFeatures(model, spec)
    cache = split.prefix(torch.randn(12, 3, 32, 32))
    theta0 = spec.get(model)
    _, means = support_pass(split, cache, theta0)
    first = slice(0, spec.sizes[0])
    # the support mean of each BN output is gamma * (mu_s - mu_r) / sigma + beta; it is off beta
    assert (means.mean(0)[first] - theta0[first]).abs().max() > 0.1
    theta = recentered(theta0, means, alpha=1.0)
    after = theta_means(split, cache, theta).mean(0)
    # the first theta layer's input does not depend on theta: alpha 1 puts its mean back on beta0
    torch.testing.assert_close(after[first], theta0[first], atol=1e-5, rtol=0)
    half = recentered(theta0, means, alpha=0.5)
    torch.testing.assert_close(half - theta0, 0.5 * (theta - theta0))
    assert recentered(theta0, means, alpha=0.0) is theta0


def test_means_are_taken_before_in_place_activations_and_match_a_manual_forward():
    model = _model_with_shifted_statistics(1)
    spec = ThetaSpec.from_model(model, max_size=24)
    x = torch.randn(6, 3, 32, 32)
    split = SplitFeatures(model, spec)
    feats, means = support_pass(split, split.prefix(x), spec.get(model))
    layers = recenter_layers(model, spec.names)
    # manual reference: run the encoder module by module and read each BN output before ReLU
    ref, h = [], x
    for m in model.encoder:
        h = m(h)
        if any(m is layer for layer in layers):
            ref.append(h.mean((2, 3)).clone())
    torch.testing.assert_close(means, torch.cat(ref, 1), atol=1e-5, rtol=0)
    torch.testing.assert_close(feats, model.features(x), atol=1e-5, rtol=0)


def test_conv_bias_entries_do_not_move():
    torch.manual_seed(0)
    model = create_model("conv4", num_classes=5, width=8).eval()
    conv = model.encoder[0]  # a conv bias has no training mean to return to
    conv.bias = torch.nn.Parameter(torch.randn(conv.out_channels))
    spec = ThetaSpec(("encoder.0.bias", "encoder.5.bias"), (8, 8))
    assert [m is None for m in recenter_layers(model, spec.names)] == [True, False]
    split = SplitFeatures(model, spec)
    theta0 = spec.get(model)
    _, means = support_pass(split, split.prefix(torch.randn(4, 3, 32, 32)), theta0)
    moved = recentered(theta0, means, alpha=1.0) - theta0
    assert torch.all(moved[:8] == 0) and moved[8:].abs().max() > 0


def test_best_alone_reads_the_zero_step_column_and_keeps_no_adaptation_unless_beaten():
    table = {"0.0": {"0": 0.60, "2": 0.71}, "0.5": {"0": 0.63, "2": 0.70},
             "1.0": {"0": 0.63, "2": 0.50}}
    assert best_alone(table) == 0.5  # the drift's columns do not count; ties go to the smaller
    assert best_alone({"0.0": {"0": 0.60, "2": 0.9}, "0.5": {"0": 0.59}}) == 0.0
    assert best_alone({}) == 0.0


def test_the_guards_recentring_strength_is_the_settings_own_else_guard_recenter():
    assert IntegratorSettings(recenter=0.5, guard_recenter=0.75).guard_alpha == 0.5
    assert IntegratorSettings(guard_recenter=0.75).guard_alpha == 0.75
    assert IntegratorSettings().guard_alpha == 0.0
    with pytest.raises(ConfigError, match="guard_recenter"):
        IntegratorSettings(guard_recenter=2.5)
