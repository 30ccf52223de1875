import numpy as np
import pytest
import torch

from edgeflow.adapt.meta_train import velocity_targets
from edgeflow.adapt.tasks import SHIFTS, apply_shift, instance_views, make_instance_task, sample_shift
from edgeflow.data import ImageDataset, Preprocess
from edgeflow.errors import ConfigError, DataError


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


def _flat_dataset() -> ImageDataset:
    """Flat-colour images named by their channel order, which views keep (a crop of a flat image
    is flat, and the contrast/brightness jitter is one positive affine map for all channels):
    the brightest channel is the class, the order of the other two the image within it."""
    images, labels = [], []
    for c in range(3):
        others = [k for k in range(3) if k != c]
        for order in (others, others[::-1]):
            px = np.zeros(3, np.uint8)
            px[c], px[order[0]], px[order[1]] = 180, 120, 60
            images.append(np.broadcast_to(px, (12, 12, 3)))
            labels.append(c)
    return ImageDataset(images=np.stack(images), labels=np.asarray(labels), classes=("a", "b", "c"),
                        source="flat")


def test_instance_tasks_are_views_of_distinct_images_of_one_class():
    ds = _flat_dataset()
    for seed in range(6):
        task = make_instance_task(ds, np.random.default_rng(seed), Preprocess(size=12), ways=2,
                                  shots=2, queries=3)
        assert task.kind == "instance" and task.ways == 2
        assert task.support_x.shape == (4, 3, 12, 12) and task.query_x.shape == (6, 3, 12, 12)
        assert task.support_y.tolist() == [0, 0, 1, 1]
        assert task.query_y.tolist() == [0, 0, 0, 1, 1, 1]
        # undo the normalisation, then name each view by its channel order
        mean, std = torch.tensor(Preprocess(size=12).mean), torch.tensor(Preprocess(size=12).std)
        x = torch.cat([task.support_x, task.query_x]).mean((2, 3)) * std + mean
        y = torch.cat([task.support_y, task.query_y])
        names = [tuple(v.argsort(descending=True).tolist()) for v in x]
        assert len({n[0] for n in names}) == 1  # one dataset class per task
        per_label = [{n for n, lab in zip(names, y.tolist(), strict=True) if lab == k} for k in range(2)]
        assert all(len(s) == 1 for s in per_label)  # every view of a label: the same image
        assert per_label[0] != per_label[1]  # and a different image per label
    img = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    a = instance_views(img, 5, np.random.default_rng(3))
    assert a.shape == (5, 16, 16, 3) and a.dtype == np.uint8
    assert np.array_equal(a, instance_views(img, 5, np.random.default_rng(3)))  # seeded
    assert not np.array_equal(a[0], a[1])  # views differ
    with pytest.raises(DataError, match="at least 3 images"):
        make_instance_task(ds, np.random.default_rng(0), Preprocess(size=12), ways=3, shots=1,
                           queries=1)
