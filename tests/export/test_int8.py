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


def test_theta_input_graph(tmp_path, cifar_small):
    """A backbone whose BatchNorm biases come from a `theta` input (as in a bundle) quantises with
    theta0 fed during calibration, keeps the theta path in float, and tracks FP32 when theta moves."""
    import copy

    import torch
    import torch.nn.functional as F

    from edgeflow.models import create_model
    from tests.conftest import shared_file

    model = copy.deepcopy(create_model("resnet20",
                                       weights=shared_file("weights/cifar10-resnet20-12fca82f.th")).eval())
    theta0 = torch.cat([p.detach() for _, p in model.adaptable_biases()])

    class ThetaBN(torch.nn.Module):
        """BatchNorm (eval) whose bias is the current slice of theta."""

        def __init__(self, bn):
            super().__init__()
            self.bn, self.bias = bn, None

        def forward(self, x):
            bn = self.bn
            return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, self.bias, False, 0.0, bn.eps)

    wrapped = []
    for mod in list(model.modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, torch.nn.BatchNorm2d):
                setattr(mod, child_name, ThetaBN(child))
                wrapped.append(getattr(mod, child_name))
    assert sum(w.bn.num_features for w in wrapped) == theta0.numel()

    class Graph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, x, theta):
            for w, t in zip(wrapped, torch.split(theta, [w.bn.num_features for w in wrapped]), strict=True):
                w.bias = t
            return self.m.features(x)

    fp32 = tmp_path / "theta.onnx"
    with torch.no_grad():
        torch.onnx.export(Graph().eval(), (torch.zeros(2, 3, 32, 32), theta0), str(fp32),
                          input_names=["images", "theta"], output_names=["features"], opset_version=17,
                          dynamo=False, dynamic_axes={"images": {0: "N"}, "features": {0: "N"}})
    calib_pool, evaluation, spec = cifar_small
    sample = draw_calibration_sample(calib_pool, samples=32, seed=0, preprocess=spec)
    th0 = theta0.numpy()
    with pytest.raises(ConfigError, match="extra_inputs"):
        quantize_onnx_int8(fp32, tmp_path / "x.onnx", sample=sample)
    out = quantize_onnx_int8(fp32, tmp_path / "theta.int8.onnx", sample=sample, extra_inputs={"theta": th0})
    assert count_qdq(out)["QuantizeLinear"] > 10
    import onnx

    consumers = [n.op_type for n in onnx.load(str(out)).graph.node if "theta" in n.input]
    assert consumers and "QuantizeLinear" not in consumers  # theta itself stays float

    x = preprocess(evaluation.images[:64], spec)
    s32 = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    s8 = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    moved = th0 + np.random.default_rng(0).normal(size=th0.shape).astype(np.float32) * 0.3 * th0.std()
    reference = create_model("resnet20", weights=shared_file("weights/cifar10-resnet20-12fca82f.th")).eval()
    with torch.no_grad():  # the FP32 theta graph at theta0 is the plain model
        np.testing.assert_allclose(s32.run(None, {"images": x, "theta": th0})[0],
                                   reference.features(torch.from_numpy(x)).numpy(), atol=1e-4, rtol=1e-3)
    for theta in (th0, moved):
        a = s32.run(None, {"images": x, "theta": theta})[0]
        b = s8.run(None, {"images": x, "theta": theta})[0]
        cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        assert cos.mean() > 0.99, cos.mean()
    # and moving theta really changes the features (the input is wired, not folded away)
    assert not np.allclose(s8.run(None, {"images": x, "theta": moved})[0],
                           s8.run(None, {"images": x, "theta": th0})[0], atol=1e-3)


def _tiny_theta_graph(path, *, nonlinear=False):
    """Two convs whose outputs get `theta` slices added (the bundle layout); random weights."""
    import torch
    from torch import nn

    torch.manual_seed(0)

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1)

        def forward(self, x, theta):
            t = theta * theta if nonlinear else theta
            h = torch.relu(self.c1(x) + t[:8].view(1, 8, 1, 1))
            h = torch.relu(self.c2(h) + (0.5 + t[8:24]).view(1, 16, 1, 1))
            return h.mean((2, 3))

    theta0 = torch.linspace(-0.5, 0.5, 24)
    with torch.no_grad():
        torch.onnx.export(Tiny().eval(), (torch.zeros(2, 3, 8, 8), theta0), str(path),
                          input_names=["images", "theta"], output_names=["features"], opset_version=17,
                          dynamo=False, dynamic_axes={"images": {0: "N"}, "features": {0: "N"}})
    return theta0.numpy()


def test_theta_in_bias_fuses_and_tracks_theta(tmp_path):
    import onnx

    from edgeflow.export.int8_theta import find_bias_adds

    fp32 = tmp_path / "tiny.onnx"
    th0 = _tiny_theta_graph(fp32)
    rng = np.random.default_rng(0)
    sample = rng.normal(size=(32, 3, 8, 8)).astype(np.float32)
    adds = find_bias_adds(onnx.load(str(fp32)), theta="theta", image_feed={"images": sample[:1]}, size=24)
    assert [len(a.index) for a in adds] == [8, 16]
    np.testing.assert_array_equal(np.concatenate([a.index for a in adds]), np.arange(24))
    np.testing.assert_allclose(adds[1].offset, 0.5)  # the constant part of the second bias

    out = quantize_onnx_int8(fp32, tmp_path / "tiny.int8.onnx", sample=sample, extra_inputs={"theta": th0},
                             theta_mode="bias")
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert "Gather" in ops and "Split" in ops and ops.count("Add") == 1  # only the bias computation
    assert count_qdq(out)["theta_in_bias"]
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    s8 = ort.InferenceSession(str(out), opts, providers=["CPUExecutionProvider"])
    fused = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert fused.count("QLinearConv") == 2  # both convolutions run in INT8 with a theta bias
    s32 = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    x = rng.normal(size=(16, 3, 8, 8)).astype(np.float32)
    for theta in (th0, th0 + 0.3, -th0):
        a = s32.run(None, {"images": x, "theta": theta})[0]
        b = s8.run(None, {"images": x, "theta": theta})[0]
        assert np.linalg.norm(a - b) / np.linalg.norm(a) < 0.1
    moved = s8.run(None, {"images": x, "theta": th0 + 0.3})[0]
    assert not np.allclose(moved, s8.run(None, {"images": x, "theta": th0})[0], atol=1e-3)


def test_theta_used_otherwise_falls_back_to_float_adds(tmp_path):
    import onnx

    fp32 = tmp_path / "sq.onnx"
    th0 = _tiny_theta_graph(fp32, nonlinear=True)
    sample = np.random.default_rng(0).normal(size=(16, 3, 8, 8)).astype(np.float32)
    with pytest.raises(ConfigError, match="theta_mode='float'"):
        quantize_onnx_int8(fp32, tmp_path / "a.onnx", sample=sample, extra_inputs={"theta": th0},
                           theta_mode="bias")
    out = quantize_onnx_int8(fp32, tmp_path / "b.onnx", sample=sample, extra_inputs={"theta": th0})
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert "Gather" not in ops and ops.count("QuantizeLinear") > 0  # the auto fallback quantised
    assert not count_qdq(out)["theta_in_bias"]
