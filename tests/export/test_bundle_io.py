import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from edgeflow.errors import BundleError
from edgeflow.runtime import BundleWriter, load_bundle, verify_files
from tests.export.helpers import tiny_manifest

ROOT = Path(__file__).resolve().parents[2]


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_load_verifies_every_file(plain_bundle, tmp_path):
    good = load_bundle(plain_bundle[0])
    assert all(r["status"] == "ok" for r in verify_files(good.path, good.manifest))

    tampered = _copy(plain_bundle[0], tmp_path / "tampered")
    data = bytearray((tampered / "backbone.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
    (tampered / "backbone.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"backbone\.onnx: sha256 mismatch"):
        load_bundle(tampered)

    truncated = _copy(plain_bundle[0], tmp_path / "truncated")
    raw = (truncated / "theta0.npy").read_bytes()
    (truncated / "theta0.npy").write_bytes(raw[:-10])
    with pytest.raises(BundleError, match=r"theta0\.npy: truncated"):
        load_bundle(truncated)

    missing = _copy(plain_bundle[0], tmp_path / "missing")
    (missing / "backbone.onnx").unlink()
    with pytest.raises(BundleError, match=r"backbone\.onnx: missing"):
        load_bundle(missing)

    no_manifest = _copy(plain_bundle[0], tmp_path / "nomanifest")
    (no_manifest / "manifest.json").unlink()
    with pytest.raises(BundleError, match=r"manifest\.json is missing"):
        load_bundle(no_manifest)


def test_schema_checks(plain_bundle, tmp_path):
    from edgeflow.runtime.manifest import canonical_digest

    for name, edit, msg in [("v3", lambda m: m.update(schema_version=3), "schema version 3"),
                            ("foreign", lambda m: m.update(schema="other"), "not an EdgeFlow"),
                            ("nograph", lambda m: m.pop("graphs"), "graphs: missing")]:
        b = _copy(plain_bundle[0], tmp_path / name)
        man = json.loads((b / "manifest.json").read_text())
        edit(man)
        man["manifest_digest"] = canonical_digest(man)  # a deliberate edit, not damage
        (b / "manifest.json").write_text(json.dumps(man))
        with pytest.raises(BundleError, match=msg):
            load_bundle(b)
    broken = _copy(plain_bundle[0], tmp_path / "badjson")
    (broken / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(broken)


def test_writer_leaves_nothing_on_error(tmp_path):
    out = tmp_path / "b"
    with pytest.raises(RuntimeError), BundleWriter(out) as w:
        np.save(w.path("theta0.npy"), np.zeros(3, np.float32))
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


_KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys, time
    # Ctrl-C as a terminal delivers it: a parent started in the background (nohup, `cmd &` in a
    # script) passes SIGINT down as ignored, and Python then never raises KeyboardInterrupt
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.path.insert(0, {root!r})
    import numpy as np, torch
    from edgeflow.data import Preprocess
    from edgeflow.export import export_bundle
    from edgeflow.models import create_model

    stop_at = sys.argv[2]
    def on_file(name):
        print("wrote", name, flush=True)
        if name == stop_at:
            time.sleep(60)  # the test kills us here
    torch.manual_seed(1)
    model = create_model("conv4", num_classes=5, width=8).eval()
    images = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    export_bundle(model, output=sys.argv[1], preprocess_spec=Preprocess(size=32),
                  parity_images=images, on_file=on_file)
    print("done", flush=True)
""")


@pytest.mark.parametrize(("sig", "stop_at"), [(signal.SIGKILL, "manifest.json"),
                                              (signal.SIGINT, "backbone.onnx")])
def test_killed_export_keeps_previous_bundle(tmp_path, plain_bundle, sig, stop_at):
    out = _copy(plain_bundle[0], tmp_path / "bundle")
    before = load_bundle(out).fingerprint
    script = tmp_path / "export_and_wait.py"
    script.write_text(_KILL_SCRIPT.format(root=str(ROOT)))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(out), stop_at], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in proc.stdout:
            if line.strip() == f"wrote {stop_at}":
                break
        else:
            pytest.fail(f"exporter ended early: {proc.stderr.read()}")
        proc.send_signal(sig)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode != 0
    after = load_bundle(out)  # still loads and verifies: the previous bundle, untouched
    assert after.fingerprint == before
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".bundle."))
    if sig == signal.SIGINT:  # Ctrl-C cleans its temporary directory up
        assert leftovers == []
    else:  # SIGKILL cannot clean up: a hidden temp dir may stay, the bundle is not touched
        assert all(".tmp-" in n for n in leftovers)


def test_overwrite_replaces_atomically(tmp_path):
    out = tmp_path / "b"
    for value in (1.0, 2.0):
        with BundleWriter(out) as w:
            w.commit(tiny_manifest(w, np.full(3, value, np.float32)))
        assert np.load(out / "theta0.npy")[0] == value
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_update_bundle_adds_a_precision_atomically(plain_bundle, tmp_path):
    from edgeflow.runtime.bundle import update_bundle

    b = _copy(plain_bundle[0], tmp_path / "b")
    variant = tmp_path / "int8.onnx"
    shutil.copy(b / "backbone.onnx", variant)  # stands in for the calibrated Q/DQ graph
    new = update_bundle(b, add={"backbone.int8.onnx": variant}, precisions={"int8": "backbone.int8.onnx"},
                        manifest={"metrics": {"int8_top1_delta": -0.01}})
    assert new.precisions == {"fp32": "backbone.onnx", "int8": "backbone.int8.onnx"}
    assert "backbone.int8.onnx" in new.manifest["files"] and new.manifest["metrics"]["int8_top1_delta"]
    assert new.graph_path("backbone", precision="int8").name == "backbone.int8.onnx"
    with pytest.raises(BundleError, match="no fp16 backbone"):
        new.graph_path("backbone", precision="fp16")


def test_writer_removes_only_its_own_stale_temp_dirs(tmp_path):
    """A user's `.b.backup-2024` matched the old cleanup pattern and was deleted with the next write."""
    old = time.time() - 7200
    user = tmp_path / ".b.backup-2024"
    (user / "inside").mkdir(parents=True)
    lookalike = tmp_path / ".b.tmp-mine"  # the writer's own pattern, but not made by it
    lookalike.mkdir()
    (lookalike / "notes.txt").write_text("mine")
    empty = tmp_path / ".b.tmp-k1ll3d00"  # a writer killed between mkdtemp and its marker
    empty.mkdir()
    stale = tmp_path / ".b.tmp-dead1234"  # what a killed writer leaves
    stale.mkdir()
    (stale / ".edgeflow-writer").write_bytes(b"")
    fresh = tmp_path / ".b.tmp-alive"  # another writer, still running
    fresh.mkdir()
    (fresh / ".edgeflow-writer").write_bytes(b"")
    for p in (user, lookalike, stale, empty):
        os.utime(p, (old, old))
    with BundleWriter(tmp_path / "b") as w:
        w.commit(tiny_manifest(w, np.zeros(3, np.float32)))
    assert user.is_dir() and (user / "inside").is_dir() and lookalike.is_dir() and fresh.is_dir()
    assert (lookalike / "notes.txt").read_text() == "mine"
    assert not stale.exists() and not empty.exists()
    assert ".edgeflow-writer" not in {p.name for p in (tmp_path / "b").iterdir()}
    assert load_bundle(tmp_path / "b").manifest["files"].keys() == {"theta0.npy", "backbone.onnx"}


def test_cli_errors_print_user_text_verbatim(tmp_path):
    from typer.testing import CliRunner

    from edgeflow.cli.app import app

    res = CliRunner().invoke(app, ["inspect", str(tmp_path / "runs[/old]" / "x[prune].bundle")])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.exception  # no MarkupError
    assert "runs[/old]" in res.output and "x[prune].bundle" in res.output
