"""Compile-time checks: each fires on a crafted case and passes on a valid one."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeflow.checks import (
    MB,
    check_dla,
    check_int8_calibration,
    check_memory,
    check_precision,
    check_sparsity,
    check_trt_version,
    estimate_onnx_memory,
    memory_plan,
    raise_on_failure,
    run_checks,
)
from edgeflow.errors import ConfigError
from edgeflow.targets import Target


@pytest.fixture(scope="module")
def t():
    return {n: Target.load(n) for n in ("cpu", "cuda", "jetson-orin-nano-8gb", "jetson-xavier-nx",
                                        "jetson-agx-orin-64gb")}


def test_sparsity(t):
    bad = check_sparsity(t["jetson-xavier-nx"], sparse_2_4=True)
    assert not bad.ok and "no sparse tensor cores" in bad.message and "channel granularity" in bad.message
    assert check_sparsity(t["jetson-orin-nano-8gb"], sparse_2_4=True).ok
    assert not check_sparsity(t["cpu"], sparse_2_4=True).ok
    assert check_sparsity(t["jetson-xavier-nx"], sparse_2_4=False).ok


def test_dla(t):
    bad = check_dla(t["jetson-orin-nano-8gb"], use_dla=True)
    assert not bad.ok and "no DLA cores" in bad.message and "jetson-agx-orin-64gb" in bad.message
    assert check_dla(t["jetson-agx-orin-64gb"], use_dla=True, precision="int8").ok
    fp32 = check_dla(t["jetson-agx-orin-64gb"], use_dla=True, precision="fp32")
    assert not fp32.ok and "FP16 and INT8 only" in fp32.message
    assert check_dla(t["jetson-orin-nano-8gb"], use_dla=False).ok


def test_trt_version(t):
    bad = check_trt_version(t["jetson-xavier-nx"], trt_version="10.3.0")
    assert not bad.ok and "8.5" in bad.message and "only runs on the TensorRT that built it" in bad.message
    assert check_trt_version(t["jetson-orin-nano-8gb"], trt_version="10.3.0.30").ok
    assert check_trt_version(t["cpu"], trt_version="10.3").ok  # not used there
    assert [c.name for c in run_checks(t["jetson-xavier-nx"], trt_version="8.5.2")][-1] == "tensorrt-version"


def test_precision(t):
    bad = check_precision(t["cpu"], precision="fp16")
    assert not bad.ok and "fp32, int8" in bad.message
    assert check_precision(t["jetson-orin-nano-8gb"], precision="fp16").ok


def test_int8_needs_calibration(tmp_path):
    bad = check_int8_calibration(precision="int8", calibration=None)
    assert not bad.ok and "edgeflow calibrate" in bad.message
    assert check_int8_calibration(precision="fp16", calibration=None).ok
    assert check_int8_calibration(precision="int8", calibration=None, quantized_graph=True).ok
    assert not check_int8_calibration(precision="int8", calibration=tmp_path / "nope").ok
    few = tmp_path / "few.npy"
    np.save(few, np.zeros((8, 3, 4, 4), np.float32))
    msg = check_int8_calibration(precision="int8", calibration=few)
    assert not msg.ok and "only 8 calibration images" in msg.message
    enough = np.zeros((64, 3, 4, 4), np.float32)
    assert check_int8_calibration(precision="int8", calibration=enough).ok
    assert check_int8_calibration(precision="int8", calibration=tmp_path).ok  # an image folder


def test_memory_plan_over_budget_names_the_fix(t):
    nano = t["jetson-orin-nano-8gb"]  # 1536 MB budget, 512 MB workspace, batch_max 8
    plan = memory_plan(nano, weight_bytes=400 * MB, activation_bytes_per_image=100 * MB,
                       drift_bytes=10 * MB)
    assert plan.batch == 8 and plan.workspace_bytes == 512 * MB
    assert plan.total_bytes == (400 + 800 + 10 + 512) * MB
    bad = check_memory(nano, plan)
    assert not bad.ok and "exceeds" in bad.message and "lower batch_max to 6" in bad.message
    # the suggested batch really fits, one more does not
    assert check_memory(nano, memory_plan(nano, weight_bytes=400 * MB, activation_bytes_per_image=100 * MB,
                                          drift_bytes=10 * MB, batch=6)).ok
    assert not check_memory(nano, memory_plan(nano, weight_bytes=400 * MB,
                                              activation_bytes_per_image=100 * MB,
                                              drift_bytes=10 * MB, batch=7)).ok
    assert check_memory(t["jetson-agx-orin-64gb"], memory_plan(
        t["jetson-agx-orin-64gb"], weight_bytes=400 * MB, activation_bytes_per_image=100 * MB)).ok
    with pytest.raises(ConfigError):
        memory_plan(nano, weight_bytes=-1, activation_bytes_per_image=0)


def test_run_checks_and_raise(t):
    xavier = t["jetson-xavier-nx"]
    checks = run_checks(xavier, precision="int8", sparse_2_4=True, use_dla=True)
    assert [c.name for c in checks] == ["precision", "sparsity", "dla", "int8-calibration"]
    assert [c.ok for c in checks] == [True, False, True, False]
    with pytest.raises(ConfigError) as e:
        raise_on_failure(checks, target=xavier)
    msg = str(e.value)
    assert "2 compile-time check(s) failed for target jetson-xavier-nx" in msg
    assert "sparsity:" in msg and "int8-calibration:" in msg
    raise_on_failure(run_checks(xavier, precision="fp16"))  # all ok: no error


def _tiny_graph(path):
    """x(N,3,8,8) -> Conv(4 out, 3x3, pad 1) -> Relu -> GlobalAveragePool -> y(N,4,1,1)."""
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    b = numpy_helper.from_array(np.zeros(4, np.float32), "b")
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["y"])]
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                        ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 1, 1])],
                          initializer=[w, b])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_estimate_tiny_graph_exactly(tmp_path):
    _tiny_graph(tmp_path / "t.onnx")
    m = estimate_onnx_memory(tmp_path / "t.onnx", batch=5)
    assert m.weight_bytes == (4 * 3 * 3 * 3 + 4) * 4
    x, c, r = 5 * 3 * 64 * 4, 5 * 4 * 64 * 4, 5 * 4 * 64 * 4
    # Conv: x and c live; Relu: x freed after Conv, so c and r; GAP: r and y
    assert m.peak_activation_bytes == max(x + c, c + r, r + 5 * 4 * 4)
    assert m.activation_bytes_per_image == m.peak_activation_bytes // 5


def test_estimate_resnet20(tmp_path):
    from edgeflow.models import create_model
    from tests.conftest import shared_file
    from tests.export.conftest import export_onnx

    model = create_model("resnet20", weights=shared_file("weights/cifar10-resnet20-12fca82f.th"))
    export_onnx(model, tmp_path / "r.onnx")
    convs = [m for m in model.modules() if isinstance(m, __import__("torch").nn.Conv2d)]
    # BatchNorm folds into every conv: conv weights + one bias per output channel + the head
    folded = sum(c.weight.numel() + c.out_channels for c in convs) + sum(
        p.numel() for p in model.linear.parameters())
    b1 = estimate_onnx_memory(tmp_path / "r.onnx", batch=1)
    assert folded * 4 <= b1.weight_bytes <= folded * 4 + 4096  # plus small shape constants
    b32 = estimate_onnx_memory(tmp_path / "r.onnx", batch=32)
    stem = 32 * 16 * 32 * 32 * 4  # the largest tensors: 16 channels at 32x32
    assert b32.peak_activation_bytes >= 2 * stem  # a conv's input and output are live together
    assert b32.peak_activation_bytes <= 4 * stem
    assert abs(b32.activation_bytes_per_image - b1.activation_bytes_per_image) <= 0.02 * \
        b1.activation_bytes_per_image  # linear in the batch


def test_dla_check_says_the_engine_batch_is_static(t):
    ok = check_dla(t["jetson-agx-orin-64gb"], use_dla=True, precision="fp16")
    assert ok.ok and f"fixed at batch_opt = {t['jetson-agx-orin-64gb'].batch_opt}" in ok.message


def test_desktop_profile_accepts_every_tensorrt_10(t):
    """cuda.toml lists the major: a working 10.8 desktop passes (it listed 10.3 and 10.13 only)."""
    for v in ("10.0.1", "10.8.0.43", "10.13.2"):
        assert check_trt_version(t["cuda"], trt_version=v).ok, v
    assert not check_trt_version(t["cuda"], trt_version="8.6.1").ok
    # a Jetson's TensorRT comes with its JetPack: exact versions only
    assert not check_trt_version(t["jetson-orin-nano-8gb"], trt_version="10.8.0").ok
