"""TensorRT's INT8 graph (symmetric Q/DQ) beside ONNX Runtime's, checked and run on ONNX Runtime.

TensorRT cannot run here, but its parser's Q/DQ rules can be checked on the graph, and the graph
itself runs on ONNX Runtime's CPU provider: its few-shot accuracy must stay within 1 point of FP32
on the same 5-way 5-shot episodes.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeflow.cli.app import app
from edgeflow.export.int8_trt import TENSORRT_INT8_FILE, tensorrt_qdq_problems
from edgeflow.runtime import OrtRunner, load_bundle
from tests.conftest import shared_file


@pytest.fixture(scope="module")
def calibrated(drift_bundle, tmp_path_factory):
    bundle = tmp_path_factory.mktemp("int8trt") / "b"
    shutil.copytree(drift_bundle[0], bundle)
    res = CliRunner().invoke(app, ["calibrate", str(bundle), "--data",
                                   str(shared_file("data/cifar10/train.zip")), "--samples", "128",
                                   "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["tensorrt_int8"]["file"] == TENSORRT_INT8_FILE
    return bundle


def test_the_tensorrt_graph_follows_tensorrt_s_qdq_rules_and_the_ort_one_does_not(calibrated):
    b = load_bundle(calibrated)  # every hash, the new file's too, checks out
    assert b.manifest["tensorrt"]["int8"] == TENSORRT_INT8_FILE
    assert b.manifest["precisions"]["int8"] == "backbone.int8.onnx"  # ONNX Runtime's stays
    assert tensorrt_qdq_problems(calibrated / TENSORRT_INT8_FILE, float_inputs=("theta",)) == []
    ort_problems = " ".join(tensorrt_qdq_problems(calibrated / "backbone.int8.onnx",
                                                  float_inputs=("theta",)))
    # what made TensorRT's parser reject the only INT8 graph bundles carried
    assert "INT32" in ort_problems or "UINT8" in ort_problems
    assert tensorrt_qdq_problems(calibrated / "backbone.onnx") == [
        "no QuantizeLinear/DequantizeLinear nodes (not an INT8 graph)"]


def test_the_tensorrt_graph_is_within_a_point_of_fp32_on_5way_5shot(calibrated):
    from edgeflow.data import load_dataset, preprocess

    b = load_bundle(calibrated)
    ds = load_dataset(shared_file("data/cifar10/test.zip"), limit=600)
    x = preprocess(ds.images, b.preprocess)
    theta = b.theta0()

    def features(path):
        with OrtRunner(path, threads=1) as r:
            return np.concatenate([r.infer({"images": x[i:i + 100], "theta": theta})["features"]
                                   for i in range(0, len(x), 100)])

    f32, f8 = features(calibrated / "backbone.onnx"), features(calibrated / TENSORRT_INT8_FILE)
    from edgeflow.data import EpisodeSampler

    acc = {"fp32": [], "int8": []}
    for ep in EpisodeSampler(ds.labels, ways=5, shots=5, queries=15, seed=0)(300):  # both graphs
        for name, f in (("fp32", f32), ("int8", f8)):
            protos = np.stack([f[ep.support[ep.support_labels == c]].mean(0) for c in range(5)])
            q = f[ep.query]
            pred = np.argmin(((q[:, None] - protos[None]) ** 2).sum(-1), 1)
            acc[name].append(np.mean(pred == ep.query_labels))
    fp32, int8 = 100 * np.mean(acc["fp32"]), 100 * np.mean(acc["int8"])
    assert fp32 > 50  # a real few-shot problem, not chance (20%)
    print(f"5-way 5-shot over 300 episodes: fp32 {fp32:.2f}%, TensorRT int8 graph {int8:.2f}%")
    assert abs(fp32 - int8) <= 1.0, (fp32, int8)
