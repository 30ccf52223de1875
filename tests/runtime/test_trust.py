"""Pinning (fingerprint, expect=) and Ed25519 signing, with keys made in the test."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
from typer.testing import CliRunner

from edgeflow.cli.app import app
from edgeflow.errors import BundleError, ConfigError
from edgeflow.runtime import Session, load_bundle, sign_bundle
from edgeflow.runtime.trust import SIGNATURE, generate_key

pytest.importorskip("cryptography")
runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_fingerprint_is_the_manifest_sha256(plain_bundle):
    b = load_bundle(plain_bundle[0])
    raw = (plain_bundle[0] / "manifest.json").read_bytes()
    assert b.fingerprint == "sha256:" + hashlib.sha256(raw).hexdigest()


def test_expect_pins_the_bundle(plain_bundle, drift_bundle, tmp_path):
    fp = load_bundle(plain_bundle[0]).fingerprint
    with Session(plain_bundle[0], backend="onnxruntime", expect=fp) as s:
        assert s.bundle.fingerprint == fp
    load_bundle(plain_bundle[0], expect=fp.removeprefix("sha256:").upper())  # bare hex, any case
    with pytest.raises(BundleError, match="not the expected"):
        Session(drift_bundle[0], backend="onnxruntime", expect=fp)
    with pytest.raises(ConfigError, match="64 hex digits"):
        load_bundle(plain_bundle[0], expect="sha256:abc")
    # a re-indented manifest is the same content but another fingerprint: pinned means exact
    b = shutil.copytree(plain_bundle[0], tmp_path / "b")
    (b / "manifest.json").write_text(json.dumps(json.loads((b / "manifest.json").read_text())))
    load_bundle(b)
    with pytest.raises(BundleError, match="not the expected"):
        load_bundle(b, expect=fp)


def test_sign_and_verify(plain_bundle, tmp_path):
    key, pub = generate_key(tmp_path / "k")
    _, other_pub = generate_key(tmp_path / "other")
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(ConfigError, match="exists"):
        generate_key(tmp_path / "k")
    b = shutil.copytree(plain_bundle[0], tmp_path / "b")
    with pytest.raises(BundleError, match="not signed"):
        load_bundle(b, trusted_keys=[pub])
    sign_bundle(b, key)
    assert load_bundle(b, trusted_keys=[pub]).path == b
    with Session(b, backend="onnxruntime", trusted_keys=[other_pub, pub]):
        pass
    with pytest.raises(BundleError, match="not signed by a trusted key"):
        load_bundle(b, trusted_keys=[other_pub])
    # the signature is over the fingerprint: a changed manifest (even re-sealed) is refused
    man = json.loads((b / "manifest.json").read_text())
    (b / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(BundleError, match="changed after signing"):
        load_bundle(b, trusted_keys=[pub])
    # a tampered signature value
    sign_bundle(b, key)
    doc = json.loads((b / SIGNATURE).read_text())
    doc["signature"] = doc["signature"][:10] + ("A" if doc["signature"][10] != "A" else "B") + \
        doc["signature"][11:]
    (b / SIGNATURE).write_text(json.dumps(doc))
    with pytest.raises(BundleError, match=r"not signed by a trusted key|no valid base64"):
        load_bundle(b, trusted_keys=[pub])
    (b / SIGNATURE).write_text("{")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(b, trusted_keys=[pub])


def test_cli_inspect_sign_expect(plain_bundle, tmp_path):
    b = shutil.copytree(plain_bundle[0], tmp_path / "b")
    (b / "notes.txt").write_text("hello")
    res = run("inspect", b, "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    fp = info["fingerprint"]
    assert fp == load_bundle(b).fingerprint and info["unlisted"] == ["notes.txt"]
    assert info["signature"] is None
    human = run("inspect", b)
    assert fp in human.stdout and "notes.txt" in human.stdout
    assert run("inspect", b, "--expect", fp).exit_code == 0
    bad = run("inspect", b, "--expect", "sha256:" + "0" * 64)
    assert bad.exit_code == 1 and "not the expected" in bad.output
    res = run("keygen", "-o", tmp_path / "release.key", "--json")
    assert res.exit_code == 0, res.output
    pub = json.loads(res.stdout)["public_key"]
    assert run("inspect", b, "--trusted-key", pub).exit_code == 1  # unsigned
    res = run("sign", b, "--key", tmp_path / "release.key", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["fingerprint"] == fp  # signing does not change the fingerprint
    res = run("inspect", b, "--trusted-key", pub, "--expect", fp, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["signature"]["verified"] is True
    res = run("build", b, "--expect", "sha256:" + "1" * 64)
    assert res.exit_code == 1 and "not the expected" in res.output
    res = run("bench", b, "--trusted-key", tmp_path / "missing.pub")
    assert res.exit_code == 1 and "does not exist" in res.output
    res = run("calibrate", b, "--data", "digits", "--expect", "sha256:" + "2" * 64)
    assert res.exit_code == 1 and "not the expected" in res.output
    # predict and adapt refuse before reading images
    for cmd in (["predict", b, tmp_path, "--task", tmp_path / "t.npz"],
                ["adapt", b, "--support", tmp_path, "--output", tmp_path / "t.npz"]):
        res = run(*cmd, "--expect", "sha256:" + "3" * 64)
        assert res.exit_code == 1 and "not the expected" in res.output, res.output


def test_without_cryptography_only_signatures_need_it(plain_bundle, tmp_path, monkeypatch):
    """The device may lack the optional package: bundles still load; trusted_keys says what to
    install instead of an ImportError traceback."""
    import sys

    _, pub = generate_key(tmp_path / "k")
    for mod in [m for m in sys.modules if m.split(".")[0] == "cryptography"]:
        monkeypatch.setitem(sys.modules, mod, None)  # `import` of it now raises ImportError
    assert load_bundle(plain_bundle[0], expect=load_bundle(plain_bundle[0]).fingerprint)
    with pytest.raises(ConfigError, match=r"pip install \"edgeflow\[sign\]\""):
        load_bundle(plain_bundle[0], trusted_keys=[pub])
