"""Pinning and signing bundles: the fingerprint, ``expect=``, and optional Ed25519 signatures.

The **fingerprint** of a bundle is ``sha256:`` followed by the lower-case hex sha256 of the exact
bytes of its ``manifest.json``. The manifest lists the sha256 and size of every file the bundle
uses, and loading refuses a file that does not match, so the fingerprint pins the manifest and every
listed file: two bundles with the same fingerprint give the same predictions. (Unlisted files, the
signature file and a TensorRT engine cache under ``engines/``, are not covered; the runtime reads
no unlisted file, and engines are keyed by the ONNX hash.) ``edgeflow inspect`` prints it;
``Session(bundle, expect="sha256:...")`` and ``--expect`` refuse any other bundle.

A **signature** (``manifest.sig`` in the bundle, JSON) is an Ed25519 signature over
``b"edgeflow-bundle-signature/1\\n" + fingerprint`` (ASCII). ``Session(bundle, trusted_keys=[...])``
and ``--trusted-key`` refuse a bundle without a signature by one of those keys. Keys are PEM files
(PKCS#8 private, SubjectPublicKeyInfo public), as ``edgeflow keygen`` or
``openssl genpkey -algorithm ed25519 -out key.pem`` and ``openssl pkey -in key.pem -pubout`` make
them. Signing needs the optional ``cryptography`` package (``pip install "edgeflow[sign]"``); only
``trusted_keys=`` needs it on the device.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from edgeflow.errors import BundleError, ConfigError

SIGNATURE = "manifest.sig"
SIGNATURE_FORMAT = "edgeflow-signature/1"
_CONTEXT = b"edgeflow-bundle-signature/1\n"
MAX_SIGNATURE_BYTES = 64 << 10
KeyLike = Any  # a PEM path, PEM bytes, or a cryptography Ed25519 key object


def fingerprint_of(manifest_bytes: bytes) -> str:
    """``sha256:<hex>`` of the manifest bytes: the bundle fingerprint (see the module docstring)."""
    return "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()


def normalize_fingerprint(value: str) -> str:
    """Accept ``sha256:<hex>`` or bare hex (any case); raise on anything else."""
    v = str(value).strip().lower()
    hexpart = v.removeprefix("sha256:")
    if len(hexpart) != 64 or any(c not in "0123456789abcdef" for c in hexpart):
        raise ConfigError(f"expected fingerprint {str(value)[:80]!r} is not 'sha256:' + 64 hex "
                          "digits; copy it from `edgeflow inspect BUNDLE`")
    return "sha256:" + hexpart


def check_expected(path: Path, actual: str, expect: str | None) -> None:
    if expect is not None and normalize_fingerprint(expect) != actual:
        raise BundleError(f"bundle {path} has fingerprint {actual}, not the expected "
                          f"{normalize_fingerprint(expect)}: it is another bundle (or it was "
                          "changed); deploy the pinned bundle or update the pin")


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as exc:
        raise ConfigError("bundle signatures need the cryptography package: pip install "
                          "\"edgeflow[sign]\" (or pip install cryptography)") from exc
    return ed25519


def _pem(key: KeyLike, what: str) -> bytes:
    if isinstance(key, bytes):
        return key
    p = Path(key).expanduser()
    if not p.is_file():
        raise ConfigError(f"{what} key file {p} does not exist; make keys with `edgeflow keygen`")
    if p.stat().st_size > MAX_SIGNATURE_BYTES:
        raise ConfigError(f"{what} key file {p} is too large to be an Ed25519 PEM key")
    return p.read_bytes()


def load_private_key(key: KeyLike) -> Any:
    ed = _crypto()
    if isinstance(key, ed.Ed25519PrivateKey):
        return key
    from cryptography.hazmat.primitives import serialization

    try:
        k = serialization.load_pem_private_key(_pem(key, "private"), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{key if not isinstance(key, bytes) else 'the key'} is not an unencrypted "
                          f"PEM private key ({exc})") from exc
    if not isinstance(k, ed.Ed25519PrivateKey):
        raise ConfigError(f"{key} is a {type(k).__name__}, not an Ed25519 key; make one with "
                          "`edgeflow keygen`")
    return k


def load_public_key(key: KeyLike) -> Any:
    """An Ed25519 public key from a PEM public key (or private key, whose public half is used)."""
    ed = _crypto()
    if isinstance(key, ed.Ed25519PublicKey):
        return key
    if isinstance(key, ed.Ed25519PrivateKey):
        return key.public_key()
    from cryptography.hazmat.primitives import serialization

    data = _pem(key, "trusted")
    if b"PRIVATE KEY" in data:
        return load_private_key(data).public_key()
    try:
        k = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{key if not isinstance(key, bytes) else 'the key'} is not a PEM public "
                          f"key ({exc})") from exc
    if not isinstance(k, ed.Ed25519PublicKey):
        raise ConfigError(f"{key} is a {type(k).__name__}, not an Ed25519 public key")
    return k


def key_id(public_key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_key(path: str | Path) -> tuple[Path, Path]:
    """Write a new Ed25519 private key to ``path`` (mode 0600) and its public key to ``path.pub``."""
    ed = _crypto()
    from cryptography.hazmat.primitives import serialization

    path = Path(path).expanduser()
    pub = path.with_name(path.name + ".pub")
    for p in (path, pub):
        if p.exists():
            raise ConfigError(f"{p} exists; choose another path (keys are never overwritten)")
    key = ed.Ed25519PrivateKey.generate()
    priv_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(priv_pem)
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return path, pub


def sign_bundle(path: str | Path, key: KeyLike) -> dict[str, str]:
    """Sign the bundle at ``path`` (verified first) with ``key``; write ``manifest.sig``."""
    from edgeflow.runtime.bundle import load_bundle

    b = load_bundle(path)
    k = load_private_key(key)
    sig = k.sign(_CONTEXT + b.fingerprint.encode())
    doc = {"format": SIGNATURE_FORMAT, "algorithm": "ed25519", "fingerprint": b.fingerprint,
           "key_id": key_id(k.public_key()), "signature": base64.b64encode(sig).decode()}
    target = b.path / SIGNATURE
    if target.is_symlink():
        raise BundleError(f"{target} is a symbolic link; remove it before signing")
    tmp = b.path / f".{SIGNATURE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, target)
    return {**doc, "file": str(target)}


def read_signature(path: Path) -> dict[str, Any] | None:
    """The parsed signature file of the bundle at ``path``, None when there is none."""
    p = path / SIGNATURE
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise BundleError(f"{p} is not a regular file (a symbolic link?); sign the bundle again")
    if st.st_size > MAX_SIGNATURE_BYTES:
        raise BundleError(f"{p} is {st.st_size} bytes, too large for a signature; sign again")
    try:
        doc = json.loads(p.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{p} is not valid JSON ({exc}); sign the bundle again") from exc
    if not isinstance(doc, dict) or doc.get("format") != SIGNATURE_FORMAT \
            or doc.get("algorithm") != "ed25519" or not isinstance(doc.get("signature"), str) \
            or not isinstance(doc.get("fingerprint"), str):
        raise BundleError(f"{p} is not an {SIGNATURE_FORMAT} Ed25519 signature; sign again")
    return doc


def verify_signature(path: Path, fingerprint: str, trusted_keys: Iterable[KeyLike]) -> str:
    """The key id of the trusted key that signed this fingerprint; raise when none did."""
    _crypto()  # the install hint, before anything imports from cryptography
    from cryptography.exceptions import InvalidSignature

    keys = [load_public_key(k) for k in trusted_keys]
    if not keys:
        raise ConfigError("trusted_keys is empty: give at least one public key, or leave it None")
    doc = read_signature(path)
    if doc is None:
        raise BundleError(f"bundle {path} is not signed ({SIGNATURE} is missing) but trusted keys "
                          "were given; sign it with `edgeflow sign BUNDLE --key KEY`")
    if doc["fingerprint"] != fingerprint:
        raise BundleError(f"bundle {path}: {SIGNATURE} signs {doc['fingerprint'][:80]}, not this "
                          f"manifest ({fingerprint}); the bundle changed after signing")
    try:
        sig = base64.b64decode(doc["signature"], validate=True)
    except ValueError as exc:
        raise BundleError(f"bundle {path}: {SIGNATURE} holds no valid base64 signature") from exc
    for k in keys:
        try:
            k.verify(sig, _CONTEXT + fingerprint.encode())
        except InvalidSignature:
            continue
        return key_id(k)
    raise BundleError(f"bundle {path} is not signed by a trusted key (its signature does not verify "
                      f"with any of the {len(keys)} key(s) given); sign it with a trusted key")
