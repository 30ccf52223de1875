"""`edgeflow targets` and `edgeflow calibrate` through the real CLI."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from edgeflow.cli.app import app
from edgeflow.targets import target_names
from tests.conftest import shared_file

runner = CliRunner()


@pytest.fixture(scope="module")
def r20_onnx(tmp_path_factory):
    """The pretrained ResNet-20 (logits) as ONNX."""
    from edgeflow.models import create_model
    from tests.export.conftest import export_onnx

    path = tmp_path_factory.mktemp("cli-onnx") / "resnet20.onnx"
    export_onnx(create_model("resnet20", weights=shared_file("weights/cifar10-resnet20-12fca82f.th")), path)
    return path


def run(*args):
    return runner.invoke(app, list(map(str, args)))


def test_targets_list_json():
    res = run("targets", "list", "--json")
    assert res.exit_code == 0, res.output
    names = [t["name"] for t in json.loads(res.stdout)["targets"]]
    assert names == target_names()


def test_targets_show(tmp_path):
    res = run("targets", "show", "jetson-xavier-nx", "--json")
    assert res.exit_code == 0
    d = json.loads(res.stdout)
    assert d["sparse_2_4"] is False and d["gpu_sm"] == "7.2" and d["trt_versions"] == ["8.5"]
    human = run("targets", "show", "cpu")
    assert human.exit_code == 0 and "memory_budget_mb" in human.stdout


def test_targets_show_unknown_is_one_line():
    res = run("targets", "show", "jetson-nano")
    assert res.exit_code == 1
    assert "unknown target 'jetson-nano'" in res.output and "jetson-orin-nano-8gb" in res.output
    assert "Traceback" not in res.output


def test_targets_check(tmp_path):
    from edgeflow.models import create_model
    from tests.export.conftest import export_onnx

    onnx_path = tmp_path / "m.onnx"
    export_onnx(create_model("conv4", num_classes=5), onnx_path)
    bad = run("targets", "check", "jetson-xavier-nx", "--onnx", onnx_path, "--precision", "int8",
              "--sparse-2-4", "--json")
    assert bad.exit_code == 1
    out = json.loads(bad.stdout.splitlines()[0])
    assert not out["ok"] and {c["name"] for c in out["checks"] if not c["ok"]} == {"sparsity",
                                                                                  "int8-calibration"}
    assert out["memory_plan"]["batch"] == 8 and out["memory_plan"]["weight_bytes"] > 0
    ok = run("targets", "check", "jetson-orin-nano-8gb", "--onnx", onnx_path, "--precision", "fp16",
             "--json")
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["ok"]


def test_calibrate_onnx_end_to_end(tmp_path, r20_onnx):
    fp32 = r20_onnx
    out = tmp_path / "cal"
    args = ("calibrate", fp32, "--data", shared_file("data/cifar10/test.zip"), "--samples", 40,
            "--output", out, "--method", "percentile", "--json")
    res = run(*args)
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout)
    sample = np.load(out / "calibration.npy", allow_pickle=False)
    assert sample.shape == (40, 3, 32, 32) and sorted(rec["class_counts"].values()) == [4] * 10
    assert rec["held_out_check"]["argmax_agreement"] >= 0.85
    assert json.loads((out / "calibration.json").read_text())["sample"]["sha256"] == rec["sample"]["sha256"]
    sess = ort.InferenceSession(str(out / rec["int8"]["file"]), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"images": sample[:2]})[0].shape == (2, 10)
    # the same seed draws the same sample
    again = run(*args[:-3], "--output", tmp_path / "cal2", "--method", "minmax", "--json")
    assert again.exit_code == 0
    assert json.loads(again.stdout)["sample"]["sha256"] == rec["sample"]["sha256"]


def test_calibrate_with_recipe_and_override(tmp_path, r20_onnx):
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'data = "{shared_file("data/cifar10/test.zip")}"\nsamples = 500\n'
                      'method = "minmax"\nseed = 7\n')
    res = run("calibrate", r20_onnx, "--recipe", recipe, "--samples", 30, "--output", tmp_path / "o",
              "--json")
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout)
    assert rec["samples"] == 30 and rec["method"] == "minmax" and rec["seed"] == 7
    assert run("calibrate", r20_onnx, "--output", tmp_path / "x").exit_code == 1  # no data, no recipe


def test_calibrate_bad_method(tmp_path, r20_onnx):
    fp32 = r20_onnx
    res = run("calibrate", fp32, "--data", "digits", "--samples", 20, "--output", tmp_path,
              "--method", "kl")
    assert res.exit_code == 1 and "valid calibration methods" in res.output
