"""Trajectory bisection, controller moves, power-law fit."""

from __future__ import annotations

import itertools
import math

import pytest

from edgeflow.errors import ConfigError
from edgeflow.prune import PressureController, fit_power_law, gamma_for_density, solve_trajectory


@pytest.mark.parametrize(("target", "updates"), [(0.1, 10), (0.02, 100), (0.5, 50), (0.01, 10)])
def test_trajectory_ends_at_target_and_prunes_hard_early(target, updates):
    s, rem = solve_trajectory(target, updates)
    assert len(rem) == updates
    assert rem[-1] == pytest.approx(target, rel=1e-9)
    assert all(a > b for a, b in itertools.pairwise(rem))
    # the spec's formula, recomputed independently
    prod = 1.0
    for k in range(1, updates + 1):
        prod *= s + (0.999 - s) * (1 / (1 + math.exp(-(6 / updates) * (k - updates / 2))))
    assert prod == pytest.approx(target, rel=1e-9)
    if target < 0.5:  # early factors are smaller than late ones: hard early, gentle late
        assert rem[0] < (rem[-1] / rem[-2])


def test_trajectory_rejects_unreachable_targets():
    with pytest.raises(ConfigError, match="fewer updates"):
        solve_trajectory(0.9999, 10000)
    with pytest.raises(ConfigError, match="more updates"):
        solve_trajectory(0.01, 3)


def test_controller_bang_bang_with_inertia():
    c = PressureController(step=0.2)
    assert c.update(0.9, 0.5) == pytest.approx(0.2)
    assert c.update(0.9, 0.5) == pytest.approx(0.2 + 0.25)
    assert c.update(0.9, 0.5) == pytest.approx(0.45 + 0.3)
    assert c.pressure == pytest.approx(0.75 ** 1.5)
    assert c.update(0.1, 0.5) == pytest.approx(0.75 - 0.2)  # reversal: inertia_down starts at 0
    assert c.update(0.1, 0.5) == pytest.approx(0.55 - 0.25)
    for _ in range(5):
        c.update(0.1, 0.5)
    assert c.gamma == 0.0  # clamped


def test_controller_reset_release_drops_pressure_below_target():
    c = PressureController(step=0.2, release="reset")
    for _ in range(3):
        c.update(0.9, 0.5)
    assert c.gamma == pytest.approx(0.75)  # ramps up like the spec's controller
    assert c.update(0.4, 0.5) == 0.0 and c.pressure == 0.0  # below target: off at once
    assert c.update(0.9, 0.5) == pytest.approx(0.2)  # and ramps again from zero, inertia reset


def test_prune_config_rejects_unknown_release():
    from edgeflow.prune import PruneConfig

    with pytest.raises(ConfigError, match="inertia"):
        PruneConfig(sparsity=0.5, controller_release="instant")
    # auto: the spec's controller for long schedules, reset for short ones
    assert PruneConfig(sparsity=0.5, epochs=3).release == "reset"
    assert PruneConfig(sparsity=0.5, epochs=100).release == "inertia"
    assert PruneConfig(sparsity=0.5, epochs=3, controller_release="inertia").release == "inertia"


def test_power_law_fit_recovers_exact_law():
    gammas = [1, 2, 4, 8, 16]
    dens = [0.76 * g ** -0.69 for g in gammas]
    c, alpha = fit_power_law([*gammas, 0.5], [*dens, 1.0])  # density 1: left out
    assert c == pytest.approx(0.76, rel=1e-6)
    assert alpha == pytest.approx(0.69, rel=1e-6)
    assert gamma_for_density(0.76 * 3 ** -0.69, c, alpha) == pytest.approx(3, rel=1e-6)


def test_power_law_fit_needs_informative_points():
    with pytest.raises(ConfigError):
        fit_power_law([1, 2], [1.0, 1.0])
