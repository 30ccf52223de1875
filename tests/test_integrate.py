import math

import numpy as np
import pytest
import torch

from edgeflow.errors import ConfigError
from edgeflow.integrate import STEPPERS, integrate


@pytest.mark.parametrize("xp", ["numpy", "torch"])
def test_euler_with_gradient_drift_is_exactly_gradient_descent(xp):
    a = np.array([3.0, 0.5, 1.0])
    y0 = np.array([1.0, -2.0, 0.5])
    lr, steps = 0.1, 25
    if xp == "torch":
        a, y0 = torch.tensor(a), torch.tensor(y0)
    drift = lambda t, y: -lr * (a * y)  # noqa: E731  gradient of 0.5 * sum(a * y^2)
    got = integrate(drift, y0, steps=steps, dt=1.0, method="euler")
    ref = y0
    for _ in range(steps):
        ref = ref - lr * (a * ref)
    assert (got == ref).all()  # bit-for-bit, not approximately


@pytest.mark.parametrize(("method", "order"), [("euler", 1), ("heun", 2), ("rk4", 4)])
def test_convergence_order_on_exact_solution(method, order):
    # dy/dt = -2 t y, y(0) = 1  ->  y(1) = exp(-1)
    f = lambda t, y: -2.0 * t * y  # noqa: E731
    errs = [abs(integrate(f, np.array(1.0), steps=s, method=method) - math.exp(-1)) for s in (8, 16)]
    assert errs[0] / errs[1] == pytest.approx(2 ** order, rel=0.25)


def test_path_and_unknown_method():
    path = integrate(lambda t, y: np.ones_like(y), np.zeros(2), steps=4, return_path=True)
    assert len(path) == 5 and np.allclose(path[-1], 1.0)
    with pytest.raises(ConfigError, match="valid integrators: euler, heun, rk4"):
        integrate(lambda t, y: y, np.zeros(1), steps=1, method="dopri5")
    assert set(STEPPERS) == {"euler", "heun", "rk4"}
