"""QDQ INT8 on ONNX Runtime: the quantised ResNet-20 runs and agrees with FP32 on most images."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from edgeflow.calibration import draw_calibration_sample
from edgeflow.data import preprocess
from edgeflow.errors import ConfigError, DataError
from edgeflow.export.int8 import count_qdq, quantize_onnx_int8


def _run(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"images": x})[0]


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_int8_agrees_with_fp32(tmp_path, resnet20_onnx, cifar_small, method):
    fp32, model = resnet20_onnx
    calib_pool, evaluation, spec = cifar_small
    sample = draw_calibration_sample(calib_pool, samples=64, seed=0, preprocess=spec)
    out = quantize_onnx_int8(fp32, tmp_path / "int8.onnx", sample=sample, method=method)
    qdq = count_qdq(out)
    assert qdq["QuantizeLinear"] > 20 and qdq["DequantizeLinear"] > 20  # every conv quantised
    assert count_qdq(fp32)["QuantizeLinear"] == 0

    x = preprocess(evaluation.images[::25], spec)  # 200 images, all classes
    ref = _run(fp32, x)
    import torch

    with torch.no_grad():  # the FP32 ONNX is the PyTorch model (reference for the reference)
        np.testing.assert_allclose(ref, model(torch.from_numpy(x)).numpy(), atol=1e-3, rtol=1e-3)
    got = _run(out, x)
    agree = float(np.mean(got.argmax(1) == ref.argmax(1)))
    assert agree >= 0.9, f"INT8 and FP32 agree on only {agree:.2%} of images"
    labels = evaluation.labels[::25]
    acc32, acc8 = float(np.mean(ref.argmax(1) == labels)), float(np.mean(got.argmax(1) == labels))
    assert acc8 >= acc32 - 0.05, (acc32, acc8)
    # INT8 logits are close but not equal (it really is quantised)
    assert 0 < np.abs(got - ref).mean() < 0.1 * np.abs(ref).mean()


def test_minmax_int8_symmetric_runs(tmp_path, resnet20_onnx, cifar_small):
    fp32, _ = resnet20_onnx
    calib_pool, evaluation, spec = cifar_small
    sample = draw_calibration_sample(calib_pool, samples=32, seed=0, preprocess=spec)
    out = quantize_onnx_int8(fp32, tmp_path / "s8.onnx", sample=sample, method="minmax",
                             activation="int8", pre_process=False, per_channel=False)
    x = preprocess(evaluation.images[:64], spec)
    agree = np.mean(_run(out, x).argmax(1) == _run(fp32, x).argmax(1))
    assert agree >= 0.85


def test_bad_inputs(tmp_path, resnet20_onnx):
    fp32, _ = resnet20_onnx
    good = np.zeros((4, 3, 32, 32), np.float32)
    with pytest.raises(ConfigError, match="valid calibration methods: entropy, minmax, percentile"):
        quantize_onnx_int8(fp32, tmp_path / "o.onnx", sample=good, method="kl")
    with pytest.raises(DataError, match="float32"):
        quantize_onnx_int8(fp32, tmp_path / "o.onnx", sample=good.astype(np.float64))
    with pytest.raises(ConfigError, match="does not exist"):
        quantize_onnx_int8(tmp_path / "none.onnx", tmp_path / "o.onnx", sample=good)
    assert not (tmp_path / "o.onnx").exists()


def test_even_batches():
    from edgeflow.export.int8 import even_batch

    assert even_batch(40, 16) == 10 and even_batch(64, 16) == 16 and even_batch(7, 16) == 7
    assert even_batch(13, 8) == 1
