"""One conformance check, run on every runner this machine has (ONNX Runtime here; TensorRT on a
device with it installed)."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from edgeflow.adapt import features_with_theta
from edgeflow.errors import BackendError, DataError
from edgeflow.runtime import OrtRunner, tensorrt_available
from tests.export.helpers import as_float, cifar_test


def _ort(bundle_path):
    return OrtRunner(bundle_path / "backbone.onnx", threads=2)


def _trt(bundle_path):
    from edgeflow.runtime import EngineCache, TrtRunner, load_bundle
    from edgeflow.runtime.trt_build import (
        BuildOptions,
        build_engine,
        device_info,
        engine_loader,
        select_flags,
    )

    bundle = load_bundle(bundle_path)
    opts, dev = BuildOptions(precisions=("fp32",), batch=(1, 8, 64)), device_info()
    inputs, _ = bundle.tensors("backbone")
    engine, _ = EngineCache(bundle_path / "engines").get(
        "backbone", bundle_path / "backbone.onnx", inputs, opts, dev, builder=build_engine,
        loader=engine_loader(), plan=select_flags(opts, dev))
    return TrtRunner(engine)


RUNNERS = {
    "onnxruntime": (_ort, 1e-4, None),
    "tensorrt": (_trt, 1e-3, tensorrt_available()),  # FP32 with TF32 cleared: summation order only
}


@pytest.mark.parametrize("kind", list(RUNNERS))
def test_runner_conformance(kind, drift_bundle):
    make, tol, unavailable = RUNNERS[kind]
    if unavailable:
        pytest.skip(f"{kind}: {unavailable}")
    path, model, spec, _, _ = drift_bundle
    runner = make(path)
    theta = spec.get(model).numpy()
    x = as_float(cifar_test().images[:40])
    with pytest.raises(BackendError, match="not active"):
        runner.infer({"images": x[:1], "theta": theta})
    with runner:
        assert runner.is_active
        assert [s.name for s in runner.inputs] == ["images", "theta"]
        assert [s.name for s in runner.outputs] == ["features", "theta_means"]
        for n in (1, 5, 40):  # dynamic batch
            out = runner.infer({"images": x[:n], "theta": theta})["features"]
            with torch.no_grad():
                ref = features_with_theta(model, torch.from_numpy(x[:n]), torch.from_numpy(theta),
                                          spec).numpy()
            assert out.shape == (n, 64) and out.dtype == np.float32
            assert np.abs(out - ref).max() <= tol
        # validation is the base class's, identical for every backend
        with pytest.raises(DataError, match="missing \\['theta'\\]"):
            runner.infer({"images": x[:1]})
        with pytest.raises(DataError, match="unexpected \\['extra'\\]"):
            runner.infer({"images": x[:1], "theta": theta, "extra": theta})
        with pytest.raises(DataError, match="axis 2"):
            runner.infer({"images": x[:1, :, :16], "theta": theta})
        with pytest.raises(DataError, match="must be float32"):
            runner.infer({"images": x[:1].astype(np.int64), "theta": theta})
        with pytest.raises(DataError, match="empty"):
            runner.infer({"images": x[:0], "theta": theta})
        doubles = runner.infer({"images": x[:2].astype(np.float64), "theta": theta})["features"]
        assert np.abs(doubles - runner.infer({"images": x[:2], "theta": theta})["features"]).max() == 0
        # concurrent calls from several threads give the serial answers
        serial = [runner.infer({"images": x[i:i + 3], "theta": theta})["features"] for i in range(8)]
        with ThreadPoolExecutor(4) as pool:
            par = list(pool.map(lambda i: runner.infer({"images": x[i:i + 3], "theta": theta})["features"],
                                range(8)))
        for a, b in zip(serial, par, strict=True):
            np.testing.assert_array_equal(a, b)
    assert not runner.is_active


def test_ort_runner_reports_unloadable_file(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(BackendError, match="cannot load"):
        OrtRunner(bad).activate()
