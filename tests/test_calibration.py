"""Calibration samples: stratified over classes, reproducible per seed, plain .npy on disk."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeflow.calibration import (
    calibration_indices,
    draw_calibration_sample,
    load_sample,
    sample_digest,
    save_sample,
)
from edgeflow.data import Preprocess, load_dataset, preprocess
from edgeflow.errors import DataError


def test_stratified_and_reproducible():
    labels = np.repeat(np.arange(10), 50)
    a = calibration_indices(labels, samples=64, seed=3)
    assert np.array_equal(a, calibration_indices(labels, samples=64, seed=3))
    assert not np.array_equal(a, calibration_indices(labels, samples=64, seed=4))
    counts = np.bincount(labels[a], minlength=10)
    assert counts.sum() == 64 and counts.min() == 6 and counts.max() == 7  # 64 = 10*6 + 4
    assert len(np.unique(a)) == 64


def test_small_classes_give_all_they_have():
    labels = np.array([0] * 2 + [1] * 100 + [2] * 100)
    idx = calibration_indices(labels, samples=60, seed=0)
    counts = np.bincount(labels[idx])
    assert counts.tolist() == [2, 29, 29]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 30), min_size=1, max_size=12), st.integers(0, 2**31), st.data())
def test_quota_property(sizes, seed, data):
    """Any class sizes: exact count, no repeats, per-class counts differ by at most one unless capped."""
    labels = np.repeat(np.arange(len(sizes)), sizes)
    samples = data.draw(st.integers(1, len(labels)))
    idx = calibration_indices(labels, samples=samples, seed=seed)
    assert len(idx) == samples == len(np.unique(idx))
    counts = np.bincount(labels[idx], minlength=len(sizes))
    uncapped = counts[counts < np.asarray(sizes)]
    if len(uncapped):
        assert counts.max() - uncapped.min() <= 1


def test_too_many_samples():
    with pytest.raises(DataError, match="lower --samples"):
        calibration_indices(np.zeros(5), samples=6)


def test_draw_real_images_matches_preprocess(tmp_path):
    ds = load_dataset("digits")
    spec = Preprocess(size=16, channels=1, mean=(0.5,), std=(0.5,))
    x = draw_calibration_sample(ds, samples=30, seed=1, preprocess=spec)
    idx = calibration_indices(ds.labels, samples=30, seed=1)
    np.testing.assert_array_equal(x, preprocess(ds.images[idx], spec))
    assert x.shape == (30, 1, 16, 16) and x.dtype == np.float32
    path = save_sample(tmp_path / "s.npy", x)
    y = load_sample(path)
    np.testing.assert_array_equal(x, y)
    assert sample_digest(x) == sample_digest(y)
    assert sample_digest(x) != sample_digest(x[:-1])


def test_load_rejects_pickles_and_wrong_shapes(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"not a plain \.npy"):
        load_sample(tmp_path / "obj.npy")
    np.save(tmp_path / "flat.npy", np.zeros((3, 4), dtype=np.float32))
    with pytest.raises(DataError, match="float32"):
        load_sample(tmp_path / "flat.npy")
    with pytest.raises(DataError, match="does not exist"):
        load_sample(tmp_path / "nope.npy")


ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "calibration").glob("*.toml")))
def test_shipped_recipes_load(name):
    from edgeflow.calibration import CalibrationRecipe

    r = CalibrationRecipe.load(ROOT / "calibration" / name)
    assert r.samples >= 256 and r.method in ("entropy", "percentile", "minmax")
    assert r.data.endswith(".zip") and __import__("os").path.isabs(r.data)


def test_recipe_strict_keys_and_overrides(tmp_path):
    from edgeflow.calibration import CalibrationRecipe
    from edgeflow.errors import ConfigError

    p = tmp_path / "r.toml"
    p.write_text('data = "imgs.zip"\nsamples = 100\nmethd = "entropy"\n')
    with pytest.raises(ConfigError, match=r"unknown keys \['methd'\]"):
        CalibrationRecipe.load(p)
    p.write_text('data = "imgs.zip"\nsamples = 100\nmean = [0.5]\nstd = [0.25]\n')
    r = CalibrationRecipe.load(p)
    assert r.data == str(tmp_path / "imgs.zip") and r.mean == (0.5,) and r.method == "entropy"
    o = r.with_overrides(samples=64, method=None, seed=3)
    assert (o.samples, o.method, o.seed, o.data) == (64, "entropy", 3, r.data)
    p.write_text("samples = 100\n")
    with pytest.raises(ConfigError, match="missing key data"):
        CalibrationRecipe.load(p)
