import json
import shutil

from typer.testing import CliRunner

from edgeflow.cli.app import app
from edgeflow.runtime import Session, load_bundle
from tests.conftest import shared_file


def test_calibrate_a_bundle_adds_int8_that_the_session_runs(drift_bundle, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(drift_bundle[0], bundle)
    res = CliRunner().invoke(app, ["calibrate", str(bundle), "--data",
                                   str(shared_file("data/cifar10/train.zip")), "--samples", "64",
                                   "--json"])
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout)
    assert rec["bundle"] == str(bundle) and rec["held_out_check"]["mean_cosine"] > 0.99
    b = load_bundle(bundle)  # every hash still checks out
    assert b.manifest["precisions"]["int8"] == "backbone.int8.onnx"
    assert (bundle / "calibration_sample.npy").is_file()
    with Session(bundle, backend="onnxruntime", precision="int8") as s:
        assert s.precision == "int8"


def test_session_picks_precision_per_target(drift_bundle, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(drift_bundle[0], bundle)
    with Session(bundle, target="cpu") as s:  # the bundle carries fp32 only
        assert (s.backend, s.precision) == ("onnxruntime", "fp32")
    res = CliRunner().invoke(app, ["calibrate", str(bundle), "--data",
                                   str(shared_file("data/cifar10/train.zip")), "--samples", "32"])
    assert res.exit_code == 0, res.output
    with Session(bundle, target="cpu") as s:  # now INT8, which the CPU profile runs fastest
        assert (s.backend, s.precision) == ("onnxruntime", "int8")
    with Session(bundle, target="cpu", precision="fp32") as s:  # an explicit choice wins
        assert s.precision == "fp32"
    # a Jetson profile here: TensorRT is absent, so auto falls back to ONNX Runtime and says why
    with Session(bundle, target="jetson-orin-nano-8gb") as s:
        assert s.backend == "onnxruntime" and "TensorRT" in s.fallback_reason
