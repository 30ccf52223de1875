"""Fixed-step ODE integrators shared by training (torch) and the on-device runtime (numpy).

The API follows torchdiffeq: ``integrate(f, y0, steps=S, dt=None, method="euler")`` where
``f(t, y)`` returns dy/dt. Each method is *one step* written with ``+`` and ``*`` only, so the same
definition runs on numpy arrays and torch tensors: the runtime and the meta-trainer cannot drift
apart. This module imports neither numpy nor torch.

With ``f = -lr * grad(L)`` and ``dt = 1``, Euler is plain gradient descent: that is the sense in which
HyperFlow's learned drift *emulates* fine-tuning.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edgeflow.errors import ConfigError, unknown_name

Drift = Callable[[float, Any], Any]


def euler_step(f: Drift, t: float, y: Any, dt: float) -> Any:
    return y + dt * f(t, y)


def heun_step(f: Drift, t: float, y: Any, dt: float) -> Any:
    """Heun / explicit trapezoid (RK2): average the slope at both ends of the step."""
    k1 = f(t, y)
    k2 = f(t + dt, y + dt * k1)
    return y + (0.5 * dt) * (k1 + k2)


def rk4_step(f: Drift, t: float, y: Any, dt: float) -> Any:
    k1 = f(t, y)
    k2 = f(t + 0.5 * dt, y + (0.5 * dt) * k1)
    k3 = f(t + 0.5 * dt, y + (0.5 * dt) * k2)
    k4 = f(t + dt, y + dt * k3)
    return y + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


STEPPERS: dict[str, Callable[[Drift, float, Any, float], Any]] = {
    "euler": euler_step,
    "heun": heun_step,
    "rk4": rk4_step,
}
EVALS_PER_STEP = {"euler": 1, "heun": 2, "rk4": 4}


def integrate(f: Drift, y0: Any, *, steps: int, dt: float | None = None, t0: float = 0.0,
              method: str = "euler", return_path: bool = False) -> Any:
    """Integrate dy/dt = f(t, y) from ``t0`` for ``steps`` fixed steps of ``dt`` (default 1/steps).

    Returns y at the end, or the list [y0, y1, ..., y_steps] with ``return_path=True``.
    """
    if method not in STEPPERS:
        raise unknown_name("integrator", method, list(STEPPERS))
    if steps < 0:
        raise ConfigError(f"steps must be >= 0, got {steps}")
    if dt is None:
        dt = 1.0 / max(1, steps)
    step = STEPPERS[method]
    y, t = y0, t0
    path = [y0]
    for k in range(steps):
        y = step(f, t, y, dt)
        t = t0 + (k + 1) * dt
        if return_path:
            path.append(y)
    return path if return_path else y
