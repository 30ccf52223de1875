"""TensorRT calibrator logic without a GPU: batches, cache keyed by version, refusal of others."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from edgeflow.errors import BackendError, ConfigError
from edgeflow.export.trt_calibrator import (
    CalibrationBatches,
    CalibrationCache,
    EntropyCalibratorCore,
    cache_header,
    make_entropy_calibrator,
    trt_version_code,
)
from edgeflow.runtime.backends import tensorrt_available


def _sample(n=10):
    return np.arange(n * 3 * 4 * 4, dtype=np.float32).reshape(n, 3, 4, 4)


def test_version_codes_match_tensorrt_headers():
    # Headers seen in real caches: TRT-8601-EntropyCalibration2 (8.6.1), TRT-100300-... (10.3.0).
    assert trt_version_code("8.6.1") == 8601 and trt_version_code("8.5.2.2") == 8502
    assert trt_version_code("10.3.0") == 100300 and trt_version_code("10.13.3.9") == 101303
    assert cache_header("10.3.0.30") == "TRT-100300-EntropyCalibration2"
    with pytest.raises(ConfigError):
        trt_version_code("ten")


def test_batches_cover_sample_in_order_and_drop_partial():
    x = _sample(10)
    b = CalibrationBatches(x, batch_size=4)
    assert len(b) == 2 and b.batch_shape == (4, 3, 4, 4) and b.batch_nbytes == 4 * 48 * 4
    got = [b.next(), b.next(), b.next()]
    np.testing.assert_array_equal(got[0], x[:4])
    np.testing.assert_array_equal(got[1], x[4:8])
    assert got[2] is None and b.next() is None
    assert got[0].flags["C_CONTIGUOUS"]
    b.reset()
    np.testing.assert_array_equal(b.next(), x[:4])


def test_batches_reject_bad_sizes():
    with pytest.raises(ConfigError, match="between 1 and the sample size 10"):
        CalibrationBatches(_sample(10), batch_size=11)
    with pytest.raises(Exception, match="float32"):
        CalibrationBatches(_sample(10).astype(np.float16), batch_size=2)


def test_core_drives_like_tensorrt(tmp_path):
    """Replays TensorRT's calls: read cache (none) -> get_batch until None -> write cache -> reuse."""
    x = _sample(9)
    core = EntropyCalibratorCore(x, input_name="images", batch_size=3, cache_dir=tmp_path,
                                 trt_version="10.3.0")
    assert core.get_batch_size() == 3 and core.read_calibration_cache() is None
    fed = []
    while (arrays := core.next_host_batch(["images"])) is not None:
        fed.append(arrays[0])
    np.testing.assert_array_equal(np.concatenate(fed), x)
    written = b"TRT-100300-EntropyCalibration2\nimages: 3c010a14\n"
    core.write_calibration_cache(memoryview(written))  # TensorRT hands a buffer, not bytes
    assert core.cache.path.name.startswith("calib-trt10.3.0-")
    again = EntropyCalibratorCore(x, input_name="images", batch_size=3, cache_dir=tmp_path,
                                  trt_version="10.3.0")
    assert again.read_calibration_cache() == written
    # another sample or batch size is another key: no reuse of scales computed on other data
    other = EntropyCalibratorCore(x[:6], input_name="images", batch_size=3, cache_dir=tmp_path,
                                  trt_version="10.3.0")
    assert other.cache.path != core.cache.path and other.read_calibration_cache() is None
    with pytest.raises(BackendError, match="extra_inputs"):
        core.next_host_batch(["images", "theta"])


def test_core_feeds_extra_inputs_in_tensorrt_order(tmp_path):
    theta = np.linspace(-1, 1, 7, dtype=np.float32)
    core = EntropyCalibratorCore(_sample(4), input_name="images", batch_size=2, cache_dir=tmp_path,
                                 trt_version="8.6.1", extra_inputs={"theta": theta})
    first = core.next_host_batch(["theta", "images"])
    np.testing.assert_array_equal(first[0], theta)
    np.testing.assert_array_equal(first[1], _sample(4)[:2])
    assert core.next_host_batch(["images", "theta"])[0].shape == (2, 3, 4, 4)
    assert core.next_host_batch(["images", "theta"]) is None


def test_cache_of_other_version_is_refused(tmp_path):
    new = CalibrationCache(tmp_path, trt_version="10.3.0", key="abc")
    new.path.parent.mkdir(parents=True, exist_ok=True)
    new.path.write_bytes(b"TRT-8601-EntropyCalibration2\nimages: 3c010a14\n")  # copied from JetPack 6.0
    assert new.read() is None
    assert "TRT-8601" in new.refused and "recalibrating" in new.refused
    old = CalibrationCache(tmp_path, trt_version="8.6.1", key="abc")
    assert old.path != new.path  # one file per version
    with pytest.raises(BackendError, match=r"not 10\.3\.0"):
        new.write(b"TRT-8601-EntropyCalibration2\n")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT present")
def test_factory_without_tensorrt_says_what_to_do(tmp_path):
    with pytest.raises(BackendError, match="TensorRT is not installed"):
        make_entropy_calibrator(_sample(4), input_name="images", batch_size=2, cache_dir=tmp_path)


@pytest.mark.trt
@pytest.mark.skipif(tensorrt_available() is not None, reason="needs TensorRT and pycuda on a GPU")
def test_factory_is_a_tensorrt_calibrator(tmp_path):
    import tensorrt as trt

    calib = make_entropy_calibrator(_sample(4), input_name="images", batch_size=2, cache_dir=tmp_path)
    assert isinstance(calib, trt.IInt8EntropyCalibrator2)
    assert calib.get_batch_size() == 2 and calib.get_batch(["images"]) is not None
