import numpy as np
import pytest
import torch

from edgeflow.adapt.meta_train import velocity_targets
from edgeflow.adapt.tasks import SHIFTS, apply_shift, sample_shift
from edgeflow.errors import ConfigError


def test_linear_targets_on_a_hand_made_trajectory():
    # theta_k for k = 0..4, 2-D; stop at k* = 4 (the path has one extra point that must be ignored)
    path = torch.tensor([[0.0, 0.0], [1.0, 2.0], [3.0, 2.0], [3.0, 5.0], [4.0, 5.0], [99.0, 99.0]])
    paths = path[None].expand(4, -1, -1)
    stop = torch.tensor([4, 4, 4, 0])
    t = torch.tensor([0.0, 0.3, 0.9, 0.5])
    theta_t, v = velocity_targets(paths, stop, t, kind="linear")
    # t=0.3 -> segment k=1 (t*L = 1.2), local fraction u=0.2: not the global t
    torch.testing.assert_close(theta_t[1], torch.tensor([1.0 + 0.2 * 2.0, 2.0]))
    torch.testing.assert_close(v[1], torch.tensor([2.0, 0.0]) * 4)
    torch.testing.assert_close(theta_t[0], path[0])
    torch.testing.assert_close(v[0], (path[1] - path[0]) * 4)
    # t=0.9 -> k=3, u=0.6, last segment ends at theta_4, never at the extra point
    torch.testing.assert_close(theta_t[2], torch.tensor([3.6, 5.0]))
    torch.testing.assert_close(v[2], torch.tensor([4.0, 0.0]))
    # stop 0: the task wants no adaptation, zero velocity at theta_0
    torch.testing.assert_close(theta_t[3], path[0])
    torch.testing.assert_close(v[3], torch.zeros(2))


def test_cubic_targets_are_exact_on_a_quadratic_path():
    # theta_k = a k^2 + b k + c; Catmull-Rom reproduces quadratics on interior segments
    a, b, c = torch.tensor([0.5, -1.0]), torch.tensor([1.0, 2.0]), torch.tensor([3.0, 0.0])
    k = torch.arange(9, dtype=torch.float32)[:, None]
    path = a * k ** 2 + b * k + c
    L = 8
    t = torch.tensor([0.2, 0.37, 0.55, 0.7])  # t*L in [1.6, 5.6]: segments 1..5 are interior
    theta_t, v = velocity_targets(path[None].expand(4, -1, -1), torch.full((4,), L), t,
                                  kind="cubic")
    s = (t * L)[:, None]
    torch.testing.assert_close(theta_t, a * s ** 2 + b * s + c)
    torch.testing.assert_close(v, (2 * a * s + b) * L)  # d theta / dt = d theta / ds * L
    with pytest.raises(ConfigError, match="valid velocity targets: cubic, linear"):
        velocity_targets(path[None], torch.tensor([L]), t[:1], kind="quintic")


def test_every_shift_keeps_shape_and_is_seeded():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(4, 16, 16, 3), dtype=np.uint8)
    for name in SHIFTS:
        a = apply_shift(images, (name,), np.random.default_rng(5))
        b = apply_shift(images, (name,), np.random.default_rng(5))
        assert a.shape == images.shape and a.dtype == np.uint8, name
        assert np.array_equal(a, b), name
        assert not np.array_equal(a, images), name
    grey = apply_shift(images[..., :1], ("invert",), rng)
    assert grey.shape == (4, 16, 16, 3)
    with pytest.raises(ConfigError, match="valid domain shifts"):
        apply_shift(images, ("sepia",), rng)
    draws = [sample_shift(np.random.default_rng(i), plain_fraction=0.3) for i in range(200)]
    assert 0.15 < sum(d == () for d in draws) / 200 < 0.45
    assert all(len(d) <= 2 and set(d) <= set(SHIFTS) for d in draws)
