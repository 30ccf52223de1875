"""CLI round trip on real images: export -> inspect -> adapt (support folder) -> predict --json."""

import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from edgeflow.cli.app import app
from tests.conftest import shared_file
from tests.export.helpers import cifar_test

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _write_images(folder, images, names):
    folder.mkdir(parents=True, exist_ok=True)
    for img, name in zip(images, names, strict=True):
        Image.fromarray(img).save(folder / f"{name}.png")


def test_export_inspect_adapt_predict_round_trip(tmp_path):
    weights = shared_file("weights/cifar10-resnet20-12fca82f.th")
    data = shared_file("data/cifar10/test.zip")
    bundle = tmp_path / "r20.bundle"
    res = run("export", "--model", "resnet20", "--weights", weights, "--parity-data", data,
              "--max-theta", "256", "--output", bundle, "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["parity_backbone_max_abs_diff"] <= 1e-4 and out["drift"] is False

    res = run("inspect", bundle, "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["ok"] and info["theta_size"] <= 256 and {f["status"] for f in info["files"]} == {"ok"}
    assert run("inspect", bundle).exit_code == 0

    ds = cifar_test()
    classes = ["airplane", "cat", "ship"]
    support, query, truth = tmp_path / "support", tmp_path / "query", {}
    for name in classes:
        idx = np.nonzero(ds.labels == ds.classes.index(name))[0]
        _write_images(support / name, ds.images[idx[:5]], [f"s{i}" for i in range(5)])
        _write_images(query, ds.images[idx[5:15]], [f"{name}_{i}" for i in range(10)])
        truth.update({f"{name}_{i}": name for i in range(10)})
    task = tmp_path / "task.npz"
    res = run("adapt", bundle, "--support", support, "--output", task, "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["classes"] == classes and out["shots"] == [5, 5, 5] and out["backend"] == "onnxruntime"

    res = run("predict", bundle, "--task", task, query, "--top-k", "2", "--json")
    assert res.exit_code == 0, res.output
    preds = json.loads(res.stdout)["predictions"]
    assert len(preds) == 30 and all(len(p["top"]) == 2 for p in preds)
    assert all(p["top"][0]["score"] >= p["top"][1]["score"] for p in preds)
    # the CLI gives what the Python API gives on the same decoded images
    from edgeflow.data import load_image_folder
    from edgeflow.runtime import Session, Task

    with Session(bundle) as s:
        sup = load_image_folder(support, cache=False)
        api_task = s.adapt(sup.images, sup.labels, class_names=sup.classes)
        files = sorted(query.glob("*.png"))
        labels, _ = s.predict([np.asarray(Image.open(f).convert("RGB")) for f in files], api_task)
    cli_top = {p["image"]: p["top"][0]["class_name"] for p in preds}
    assert [cli_top[str(f)] for f in files] == [classes[i] for i in labels]
    np.testing.assert_allclose(Task.load(task).prototypes, api_task.prototypes, atol=1e-6)
    accuracy = np.mean([cli_top[str(f)] == truth[f.stem] for f in files])
    assert accuracy > 0.5  # 3-way on real images with a real backbone (chance 0.33)
    assert run("predict", bundle, "--task", task, query / "s_missing.png").exit_code == 1

    # a tampered file: inspect names it and fails
    raw = bytearray((bundle / "theta0.npy").read_bytes())
    raw[-1] ^= 1
    (bundle / "theta0.npy").write_bytes(bytes(raw))
    res = run("inspect", bundle, "--json")
    assert res.exit_code == 1 and "theta0.npy (sha256 mismatch)" in res.output
    res = run("adapt", bundle, "--support", support, "--output", task)
    assert res.exit_code == 1 and "theta0.npy: sha256 mismatch" in res.output


def test_doctor_build_and_bench(plain_bundle):
    res = run("doctor", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    rows = {r["check"]: r for r in out["checks"]}
    assert rows["onnxruntime: tiny graph vs numpy"]["ok"] is True
    if out["environment"]["tensorrt"] is None:
        assert rows["tensorrt"]["ok"] is None and "not installed" in rows["tensorrt"]["detail"]
        res = run("build", plain_bundle[0], "--precision", "fp16")
        assert res.exit_code == 1 and "TensorRT backend unavailable" in res.output
    res = run("bench", plain_bundle[0], "--repeats", "3", "--threads", "2", "--json")
    assert res.exit_code == 0, res.output
    cases = json.loads(res.stdout)["cases"]
    assert {"backbone_b1", "backbone_b32", "adapt_5w5s", "predict_75"} <= set(cases)
    assert all(c["median_ms"] > 0 for c in cases.values())
