"""The manifest schema, its digest and file confinement, on copies of a real exported bundle."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgeflow.errors import BundleError
from edgeflow.integrate import STEPPERS
from edgeflow.runtime import Session, load_bundle
from edgeflow.runtime.manifest import METHODS, canonical_digest, validate


def copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_manifest(bundle: Path, edit, *, reseal: bool = True) -> None:
    """Apply ``edit(manifest)``; ``reseal`` recomputes the digest (a deliberate edit, or what a
    version-1 bundle without digest would allow), so the schema's own checks are what refuses it."""
    path = bundle / "manifest.json"
    man = json.loads(path.read_text())
    edit(man)
    if reseal and "manifest_digest" in man:
        man["manifest_digest"] = canonical_digest(man)
    path.write_text(json.dumps(man, indent=2))


def _set(*keys, value):
    def edit(man):
        d = man
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
    return edit


def _pop(*keys):
    def edit(man):
        d = man
        for k in keys[:-1]:
            d = d[k]
        del d[keys[-1]]
    return edit


def test_methods_agree_with_the_integrators():
    assert set(METHODS) == set(STEPPERS)


def test_a_valid_byte_edit_of_any_value_is_refused(drift_bundle, tmp_path):
    """steps 5 -> 6 stays valid and used to change predictions silently; the digest refuses it."""
    for key, old, new in [("\"steps\": 5", "5", "6"), ("\"recenter\": 0.5", "0.5", "0.4"),
                          ("0.229", "0.229", "0.228"), ("\"scale\": 10.0", "10.0", "11.0")]:
        b = copy_bundle(drift_bundle[0], tmp_path / f"b{len(list(tmp_path.iterdir()))}")
        raw = (b / "manifest.json").read_text()
        assert key in raw
        (b / "manifest.json").write_text(raw.replace(key, key.replace(old, new), 1))
        with pytest.raises(BundleError, match="manifest_digest: does not match"):
            load_bundle(b)


def test_reindenting_keeps_the_digest(plain_bundle, tmp_path):
    b = copy_bundle(plain_bundle[0], tmp_path / "b")
    man = json.loads((b / "manifest.json").read_text())
    (b / "manifest.json").write_text(json.dumps(man, indent=None))
    assert load_bundle(b).manifest["theta"] == man["theta"]


BAD = [  # (edit, the field the error must name)
    (_set("adaptation", "integrator", "steps", value=1e9), "integrator.steps: expected an integer"),
    (_set("adaptation", "integrator", "steps", value=10**9), "integrator.steps: 1000000000 is outside"),
    (_set("adaptation", "integrator", "steps", value=-5), "integrator.steps: -5 is outside"),
    (_set("adaptation", "integrator", "steps", value="5"), "integrator.steps: expected an integer"),
    (_pop("adaptation", "integrator", "steps"), "integrator.steps: missing"),
    (_set("adaptation", "integrator", "dt", value=0), "integrator.dt: 0 is outside"),
    (_set("adaptation", "integrator", "recenter", value=-1), "integrator.recenter"),
    (_set("adaptation", "integrator", "guard_recenter", value=-0.5), "integrator.guard_recenter"),
    (_set("adaptation", "integrator", "method", value="magic"), "integrator.method"),
    (_set("adaptation", "scale", value=0), "adaptation.scale"),
    (_set("adaptation", "metric", value="dot"), "adaptation.metric"),
    (_set("preprocess", "std", value=[0.2, 0.0, 0.2]), r"preprocess.std\[1\]: 0.0 is outside"),
    (_set("preprocess", "std", value=[0.2, 0.2]), "preprocess.std: 2 values for 3 channels"),
    (_set("preprocess", "mean", value=[0.2, "x", 0.2]), r"preprocess.mean\[1\]: expected a number"),
    (_set("preprocess", "size", value=64), "graphs.backbone.inputs.images.shape"),
    (_set("theta", "size", value=7), "theta.size"),
    (_set("files", value=["backbone.onnx"]), "files: expected an object"),
    (_set("files", "theta0.npy", value="c0ffee"), "files.theta0.npy: expected an object"),
    (_set("files", "theta0.npy", "bytes", value=-1), "files.theta0.npy.bytes"),
    (_set("theta", "file", value="x" * 5000), "theta.file: .* is not a plain file name"),
    (_set("theta", "file", value="../x/theta0.npy"), "theta.file: .* is not a plain file name"),
    (_set("precisions", "fp32", value="/etc/passwd"), "precisions.fp32: .* is not a plain file name"),
    (_set("graphs", "backbone", "file", value="sub/backbone.onnx"), "graphs.backbone.file"),
    (_set("theta", "file", value="manifest.sig"), "theta.file: .* not manifest.json"),
    (_set("adaptation", "surprise", value=1), "adaptation.surprise: unknown field"),
    (_set("schema_version", value=2.0), "schema version 2.0"),
    (_set("adaptation", "drift", value=True), "adaptation.drift: true but graphs has no"),
    (_set("tensorrt", value={"int8": "../x.onnx"}), "tensorrt.int8: .* is not a plain file name"),
    (_set("tensorrt", value={"int8": "backbone.int8.trt.onnx"}), "uses files it does not hash"),
]


@pytest.mark.parametrize(("edit", "field"), BAD, ids=[f for _, f in BAD])
def test_invalid_manifest_names_the_field(plain_bundle, tmp_path, edit, field):
    b = copy_bundle(plain_bundle[0], tmp_path / "b")
    edit_manifest(b, edit)
    with pytest.raises(BundleError, match=field):
        load_bundle(b)


def test_tensorrt_section_of_a_calibrated_bundle_is_valid(plain_bundle, tmp_path):
    b = copy_bundle(plain_bundle[0], tmp_path / "b")
    edit_manifest(b, _set("tensorrt", value={"int8": "backbone.onnx", "format": "qdq-int8-symmetric"}))
    assert load_bundle(b).manifest["tensorrt"]["int8"] == "backbone.onnx"


def test_legacy_v1_bundle_loads_and_is_still_validated(plain_bundle, tmp_path):
    b = copy_bundle(plain_bundle[0], tmp_path / "v1")

    def to_v1(man):
        man["schema_version"] = 1
        del man["manifest_digest"]
    edit_manifest(b, to_v1)
    with Session(b, backend="onnxruntime") as s:
        assert s.bundle.manifest["schema_version"] == 1 and s.steps == 5
    from typer.testing import CliRunner

    from edgeflow.cli.app import app

    res = CliRunner().invoke(app, ["inspect", str(b)])
    assert res.exit_code == 0 and "no manifest_digest" in res.output, res.output
    edit_manifest(b, _set("preprocess", "std", value=[0.2, 0.0, 0.2]))
    with pytest.raises(BundleError, match=r"preprocess.std\[1\]"):
        Session(b, backend="onnxruntime")
    # a v2 manifest whose digest went missing is not taken for a v1 one
    v2 = copy_bundle(plain_bundle[0], tmp_path / "v2")
    edit_manifest(v2, _pop("manifest_digest"))
    with pytest.raises(BundleError, match="manifest_digest: missing"):
        load_bundle(v2)


def test_non_finite_and_duplicate_keys_are_refused(plain_bundle, tmp_path):
    b = copy_bundle(plain_bundle[0], tmp_path / "nan")
    raw = (b / "manifest.json").read_text().replace("0.229", "NaN", 1)
    (b / "manifest.json").write_text(raw)
    with pytest.raises(BundleError, match=r"preprocess.std\[0\]: nan is not finite"):
        load_bundle(b)
    d = copy_bundle(plain_bundle[0], tmp_path / "dup")
    raw = (d / "manifest.json").read_text().replace('"steps": 5,', '"steps": 5, "steps": 6,', 1)
    (d / "manifest.json").write_text(raw)
    with pytest.raises(BundleError, match="duplicate key 'steps'"):
        load_bundle(d)
    big = copy_bundle(plain_bundle[0], tmp_path / "big")
    (big / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(BundleError, match=r"not valid JSON|not an EdgeFlow"):
        load_bundle(big)


def test_symlinks_are_refused(plain_bundle, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    b = copy_bundle(plain_bundle[0], tmp_path / "payload")
    shutil.move(b / "backbone.onnx", outside / "backbone.onnx")
    os.symlink(outside / "backbone.onnx", b / "backbone.onnx")  # same bytes, outside the bundle
    with pytest.raises(BundleError, match=r"backbone\.onnx: symbolic link"):
        load_bundle(b)
    m = copy_bundle(plain_bundle[0], tmp_path / "manifest")
    shutil.move(m / "manifest.json", outside / "manifest.json")
    os.symlink(outside / "manifest.json", m / "manifest.json")
    with pytest.raises(BundleError, match="symbolic link"):
        load_bundle(m)


def test_validate_accepts_what_the_exporter_writes(drift_bundle, plain_bundle):
    for b in (drift_bundle, plain_bundle):
        man = json.loads((b[0] / "manifest.json").read_text())
        assert validate(man) == man
        assert man["schema_version"] == 2 and man["manifest_digest"] == canonical_digest(man)


def test_inspect_exits_1_naming_the_field(plain_bundle, tmp_path):
    """inspect used to exit 0 on std 0 / steps 1e9 and end in a traceback on the others."""
    from typer.testing import CliRunner

    from edgeflow.cli.app import app

    for i, (edit, field) in enumerate([(_set("preprocess", "std", value=[0.2, 0.0, 0.2]), "std"),
                                       (_set("adaptation", "integrator", "steps", value=1e9), "steps"),
                                       (_set("files", "theta0.npy", value=[1]), "files.theta0.npy"),
                                       (_pop("adaptation", "integrator", "steps"), "steps: missing"),
                                       (_set("theta", "file", value="y" * 5000), "theta.file"),
                                       (_set("sparsity", value=[1, 2]), "sparsity")]):
        b = copy_bundle(plain_bundle[0], tmp_path / f"b{i}")
        edit_manifest(b, edit)
        for args in (["inspect", str(b)], ["inspect", str(b), "--json"]):
            res = CliRunner().invoke(app, args)
            assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
            assert field in res.output
    # informational values of an unexpected inner type are shown, not a crash
    b = copy_bundle(plain_bundle[0], tmp_path / "info")
    edit_manifest(b, lambda m: m["sparsity"].update(fraction="lots", two_four=None))
    res = CliRunner().invoke(app, ["inspect", str(b)])
    assert res.exit_code == 0 and "lots of conv weights" in res.output, res.output


def test_graph_swapped_after_verification_is_refused(plain_bundle, tmp_path):
    """ONNX Runtime gets the verified bytes, not a path it opens later: a graph replaced between
    load_bundle's hash check and the Session's load is refused."""
    b = copy_bundle(plain_bundle[0], tmp_path / "b")
    bundle = load_bundle(b)
    data = bytearray((b / "backbone.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (b / "backbone.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="changed after the bundle was verified"):
        Session(bundle, backend="onnxruntime")
    np.save(b / "theta0.npy", np.zeros(bundle.theta_size, np.float32))
    with pytest.raises(BundleError, match=r"theta0\.npy changed after the bundle was verified"):
        bundle.theta0()
    shutil.copy(plain_bundle[0] / "backbone.onnx", tmp_path / "real.onnx")
    (b / "backbone.onnx").unlink()
    os.symlink(tmp_path / "real.onnx", b / "backbone.onnx")
    with pytest.raises(BundleError, match="symbolic link"):
        Session(bundle, backend="onnxruntime")


def test_inspect_of_a_damaged_backbone_is_a_report_not_a_traceback(plain_bundle, tmp_path):
    """Found by bundle_probe: the human report read the pruning structure of a backbone whose
    hash had failed (so no structure was read) and raised AttributeError."""
    from typer.testing import CliRunner

    from edgeflow.cli.app import app

    b = copy_bundle(plain_bundle[0], tmp_path / "b")
    data = bytearray((b / "backbone.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (b / "backbone.onnx").write_bytes(bytes(data))
    for args in (["inspect", str(b)], ["inspect", str(b), "--json"]):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.exception
        assert "sha256 mismatch" in res.output
