"""The backbone split at theta: prefix then suffix equals the whole graph, for FP32 and INT8."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from edgeflow.errors import ConfigError
from edgeflow.export.onnx_split import split_backbone, theta_frontier
from edgeflow.runtime import OrtRunner, load_bundle


def _run(path, feed):
    with OrtRunner(path, threads=1) as r:
        return r.infer(feed)


def _images(bundle, n=12):
    from edgeflow.data import preprocess
    from tests.export.helpers import cifar_test

    return preprocess(cifar_test(200).images[:n], bundle.preprocess)


def _check_split(whole, tmp_path, x, thetas, *, exact=True):
    pre, suf = tmp_path / "pre.onnx", tmp_path / "suf.onnx"
    frontier = split_backbone(whole, pre, suf)
    cache = _run(pre, {"images": x})
    assert list(cache) == frontier and all(len(v) == len(x) for v in cache.values())
    for theta in thetas:
        want = _run(whole, {"images": x, "theta": theta})
        got = _run(suf, {**cache, "theta": theta})
        assert set(got) == set(want)
        for k in want:  # the halves are the whole graph's own nodes: bit-identical
            if exact:
                np.testing.assert_array_equal(got[k], want[k], err_msg=k)
            else:  # ONNX Runtime fuses Q/DQ pairs differently on each side of the cut
                err = np.abs(got[k] - want[k]).max() / np.abs(want[k]).max()
                assert err < 0.05, (k, err)
    # batches of the cache concatenate: a cache made in two halves is the cache of the whole
    halves = [_run(pre, {"images": x[:5]}), _run(pre, {"images": x[5:]})]
    for name in frontier:
        np.testing.assert_array_equal(np.concatenate([h[name] for h in halves]), cache[name])
    return frontier


def test_prefix_then_suffix_equals_the_whole_backbone(drift_bundle, tmp_path):
    path = drift_bundle[0]
    b = load_bundle(path)
    rng = np.random.default_rng(0)
    thetas = [b.theta0(), b.theta0() + rng.normal(scale=0.2, size=b.theta_size).astype(np.float32)]
    frontier = _check_split(path / "backbone.onnx", tmp_path, _images(b), thetas)
    # the cut is right after the layers theta cannot reach: every frontier tensor is theta-free
    model = onnx.load(str(path / "backbone.onnx"))
    _, dependent = theta_frontier(model)
    assert frontier and not set(frontier) & dependent
    # the suffix holds no node the prefix already computed
    pre = onnx.load(str(tmp_path / "pre.onnx"))
    suf = onnx.load(str(tmp_path / "suf.onnx"))
    assert not {n.name for n in pre.graph.node if n.name} & {n.name for n in suf.graph.node if n.name}


def test_int8_graphs_split_too(drift_bundle, tmp_path):
    """ONNX Runtime's INT8 graph (theta inside the conv biases) and TensorRT's Q/DQ form split
    as well, equal to the whole graph within a quantisation step (ONNX Runtime fuses Q/DQ pairs
    into QLinearConv differently on the two sides of the cut, so not bit-identical: bundles
    carry the split for FP32 only)."""
    from edgeflow.export.int8 import quantize_onnx_int8
    from edgeflow.export.int8_trt import quantize_for_tensorrt

    path = drift_bundle[0]
    b = load_bundle(path)
    x = _images(b, 16)
    theta = [b.theta0(), b.theta0() + 0.1]
    ort_int8, trt_int8 = tmp_path / "ort.onnx", tmp_path / "trt.onnx"
    quantize_onnx_int8(path / "backbone.onnx", ort_int8, sample=x, extra_inputs={"theta": b.theta0()})
    quantize_for_tensorrt(path / "backbone.onnx", trt_int8, sample=x,
                          extra_inputs={"theta": b.theta0()})
    for whole in (ort_int8, trt_int8):
        sub = tmp_path / whole.stem
        sub.mkdir()
        _check_split(whole, sub, x, theta, exact=False)


def test_a_graph_without_theta_cannot_be_split(tmp_path):
    from edgeflow.runtime.doctor import tiny_graph

    tiny_graph(tmp_path / "t.onnx")
    with pytest.raises(ConfigError, match="no 'theta' input"):
        split_backbone(tmp_path / "t.onnx", tmp_path / "p.onnx", tmp_path / "s.onnx")
