"""Pressure: the sigmoid target trajectory (bisection), the bang-bang controller, the power law.

The trajectory prescribes the remaining fraction after each controller update ``u = 1..U``:
``remaining(u) = prod_{k<=u} r_k`` with ``r_k = s + (c - s) * sigmoid((a/U) * (k - U/2))``
(c = 0.999, a = 6). Early factors are close to ``s`` (hard pruning), late ones close to ``c``
(gentle). ``s`` is found by bisection so that ``remaining(U)`` is the target density. The spec
uses U = the number of pruning epochs; here U is the number of controller updates (see
:class:`PruneConfig.controller_every`), so the same shape is followed at finer resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgeflow.errors import ConfigError


def _remaining(s: float, updates: int, ceiling: float, steepness: float) -> list[float]:
    out, rem = [], 1.0
    for k in range(1, updates + 1):
        sig = 1.0 / (1.0 + math.exp(-(steepness / updates) * (k - updates / 2)))
        rem *= s + (ceiling - s) * sig
        out.append(rem)
    return out


def solve_trajectory(target_density: float, updates: int, *, ceiling: float = 0.999,
                     steepness: float = 6.0, tol: float = 1e-12) -> tuple[float, list[float]]:
    """(s, [remaining after update 1..U]) with remaining(U) == ``target_density`` (bisection).

    The end value increases monotonically with ``s`` on [0, 1], so bisection on that interval
    finds the unique ``s``. Raises ConfigError when even ``s = 1`` prunes more than asked
    (a very mild target with very many updates).
    """
    if updates < 1:
        raise ConfigError(f"the trajectory needs >= 1 update, got {updates}")
    if not 0.0 < target_density <= 1.0:
        raise ConfigError(f"target density must be in (0, 1], got {target_density}")
    hi_end = _remaining(1.0, updates, ceiling, steepness)[-1]
    if hi_end < target_density:
        raise ConfigError(f"a density of {target_density:.4f} cannot be reached smoothly in "
                          f"{updates} controller updates (the mildest trajectory ends at "
                          f"{hi_end:.4f}); use fewer updates (a larger controller_every)")
    lo_end = _remaining(0.0, updates, ceiling, steepness)[-1]
    if lo_end > target_density:
        raise ConfigError(f"a density of {target_density:.4f} cannot be reached in {updates} "
                          f"controller updates (the steepest trajectory ends at {lo_end:.4f}); use "
                          "more updates (a smaller controller_every) or more epochs")
    lo, hi = 0.0, 1.0
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if _remaining(mid, updates, ceiling, steepness)[-1] < target_density:
            lo = mid
        else:
            hi = mid
    s = 0.5 * (lo + hi)
    return s, _remaining(s, updates, ceiling, steepness)


@dataclass
class PressureController:
    """Bang-bang controller with inertia on gamma; the pressure is ``P = gamma ** 1.5``.

    ``update(remaining, target)``: above the target, gamma grows by ``step + inertia_up`` and
    ``inertia_up`` by ``step / 4``; otherwise gamma shrinks by ``step + inertia_down`` (clamped at
    0) and ``inertia_down`` grows by ``step / 4``. The opposite direction's inertia resets when the
    direction changes (our reading of the spec, which does not say: without it the inertia only
    ever grows and the controller oscillates ever harder).

    ``release="reset"`` (ours, for short schedules) drops gamma to 0 as soon as the density is below
    the target. The scores' Adam divides the pressure's gradient by its own scale, so any pressure
    above the flows' scale prunes at the full score learning rate: lowering gamma step by step
    does not slow the fall until gamma is nearly 0, and a schedule of a few hundred steps overshoots
    far past the target before the spec's controller gets there (B1 at 90%: density 2% at the end of
    the pruning phase).
    """

    step: float = 0.2
    gamma: float = 0.0
    inertia_up: float = 0.0
    inertia_down: float = 0.0
    release: str = "inertia"

    @property
    def pressure(self) -> float:
        return self.gamma ** 1.5

    def update(self, remaining: float, target: float) -> float:
        if remaining > target:
            self.gamma += self.step + self.inertia_up
            self.inertia_up += self.step / 4
            self.inertia_down = 0.0
        elif self.release == "reset":
            self.gamma, self.inertia_up, self.inertia_down = 0.0, 0.0, 0.0
        else:
            self.gamma = max(0.0, self.gamma - self.step - self.inertia_down)
            self.inertia_down += self.step / 4
            self.inertia_up = 0.0
        return self.gamma

    def off(self) -> None:
        self.gamma, self.inertia_up, self.inertia_down = 0.0, 0.0, 0.0


def fit_power_law(gammas, densities) -> tuple[float, float]:
    """Least-squares fit of ``density = c * gamma ** -alpha`` in log space; returns (c, alpha).

    Points with gamma <= 0 or density <= 0 (or density == 1: no pruning yet, uninformative) are
    left out; at least two distinct gammas must remain.
    """
    g = np.asarray(gammas, dtype=float)
    d = np.asarray(densities, dtype=float)
    ok = (g > 0) & (d > 0) & (d < 1)
    if ok.sum() < 2 or len(np.unique(g[ok])) < 2:
        raise ConfigError("the power-law fit needs >= 2 pressures that pruned something (0 < "
                          "density < 1); widen sweep_gammas or raise sweep_steps")
    slope, intercept = np.polyfit(np.log(g[ok]), np.log(d[ok]), 1)
    return float(math.exp(intercept)), float(-slope)


def gamma_for_density(density: float, c: float, alpha: float) -> float:
    """Invert the power law: the gamma at which the fit predicts ``density``."""
    if alpha <= 0 or c <= 0:
        raise ConfigError(f"power law c={c:.3g}, alpha={alpha:.3g} cannot be inverted (needs both "
                          "> 0: density must fall as pressure rises)")
    return (c / density) ** (1.0 / alpha)
