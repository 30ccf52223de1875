"""The bundle: a directory of ONNX graphs + ``theta0.npy`` + ``manifest.json`` (torch-free).

This module owns the on-disk format, both directions: the exporter (``edgeflow.export``) writes
bundles through :class:`BundleWriter` (:mod:`edgeflow.runtime.writer`, atomic), and the device loads
them with :func:`load_bundle`. Keeping the format here (and not in the torch-side exporter) means
the device never needs torch to read it.
Loading checks the manifest against its schema (:mod:`edgeflow.runtime.manifest`) and the size and
sha256 of every file the manifest lists; a missing, truncated or tampered file raises
:class:`BundleError` naming it. Files are confined to the bundle: the manifest names plain files
(no "..", no absolute path), a symbolic link is refused (manifest and payload alike), and nothing
the manifest does not list is read. ``expect=`` and ``trusted_keys=`` pin or authenticate the whole
bundle (:mod:`edgeflow.runtime.trust`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeflow.data.transforms import Preprocess
from edgeflow.errors import BundleError, DataError
from edgeflow.runtime.manifest import MAX_MANIFEST_BYTES, SCHEMA, SCHEMA_VERSION, file_name, validate
from edgeflow.runtime.npy import read_npy
from edgeflow.runtime.trust import SIGNATURE, check_expected, fingerprint_of, verify_signature
from edgeflow.runtime.writer import WRITER_MARKER, BundleWriter, sha256_file

__all__ = ["GRAPHS", "MANIFEST", "METRIC_SCALE", "SCHEMA", "SCHEMA_VERSION", "WRITER_MARKER", "Bundle",
           "BundleWriter", "TensorSpec", "load_bundle", "member", "read_manifest", "sha256_file",
           "unlisted_files", "update_bundle", "verify_files"]

MANIFEST = "manifest.json"
GRAPHS = ("backbone", "task_encoder", "drift")
METRIC_SCALE = 10.0  # cosine logits are scaled by this (edgeflow.adapt.prototype_logits)
KNOWN_EXTRAS = (MANIFEST, SIGNATURE, "engines")  # present but unlisted by design


def _open_regular(path: Path) -> int:
    """An fd on ``path`` if it is a regular file and not a symbolic link (O_NOFOLLOW), else raise."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise IsADirectoryError(f"{path} is not a regular file")
    return fd


def member(root: Path, name: str) -> Path:
    """The path of bundle file ``name``: a plain name inside ``root``, a regular file, no link."""
    file_name(name, "file")  # validate() checked it already; a caller's own name is checked here
    p = root / name
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        raise BundleError(f"{p} is missing; re-export the bundle or copy it again") from None
    if stat.S_ISLNK(st.st_mode):
        raise BundleError(f"{p} is a symbolic link; a bundle holds its own files (copy it with "
                          "`cp -rL`)")
    if not stat.S_ISREG(st.st_mode):
        raise BundleError(f"{p} is not a regular file")
    return p


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: name, shape (a str or None for a dynamic dim) and numpy dtype."""

    name: str
    shape: tuple[int | str | None, ...]
    dtype: str

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: dict) -> TensorSpec:
        return cls(d["name"], tuple(d["shape"]), d["dtype"])


class Bundle:
    """A verified bundle on disk. Build with :func:`load_bundle`.

    ``fingerprint`` is ``sha256:`` + the hex sha256 of ``manifest.json``'s bytes, which pins every
    listed file too (:mod:`edgeflow.runtime.trust`); tasks remember it.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], fingerprint: str) -> None:
        self.path = path
        self.manifest = manifest
        self.fingerprint = fingerprint if fingerprint.startswith("sha256:") else f"sha256:{fingerprint}"

    # -- what the Session needs -------------------------------------------------------------
    @property
    def preprocess(self) -> Preprocess:
        return Preprocess.from_dict(self.manifest["preprocess"])

    @property
    def allow_resize(self) -> bool:
        return bool(self.manifest.get("input", {}).get("allow_resize", True))

    @property
    def has_drift(self) -> bool:
        return bool(self.manifest["adaptation"]["drift"])

    @property
    def integrator(self) -> dict:
        return dict(self.manifest["adaptation"]["integrator"])

    @property
    def metric(self) -> str:
        return self.manifest["adaptation"]["metric"]

    @property
    def scale(self) -> float:
        return float(self.manifest["adaptation"].get("scale", METRIC_SCALE))

    @property
    def theta_size(self) -> int:
        return int(self.manifest["theta"]["size"])

    @property
    def precisions(self) -> dict[str, str]:
        return dict(self.manifest["precisions"])

    def graph_path(self, graph: str, *, precision: str = "fp32") -> Path:
        if graph == "backbone":
            if precision not in self.precisions:
                raise BundleError(f"bundle {self.path} has no {precision} backbone; available "
                                  f"precisions: {', '.join(self.precisions)}")
            return member(self.path, self.precisions[precision])
        if graph not in self.manifest["graphs"]:
            raise BundleError(f"bundle {self.path} has no {graph} graph (exported without a drift?)")
        return member(self.path, self.manifest["graphs"][graph]["file"])

    def file_sha256(self, name: str) -> str:
        """The sha256 the manifest lists for bundle file ``name`` (what was verified at load)."""
        return self.manifest["files"][name]["sha256"]

    def tensors(self, graph: str) -> tuple[list[TensorSpec], list[TensorSpec]]:
        g = self.manifest["graphs"][graph]
        return ([TensorSpec.from_dict(d) for d in g["inputs"]],
                [TensorSpec.from_dict(d) for d in g["outputs"]])

    def theta0(self) -> np.ndarray:
        name = self.manifest["theta"]["file"]
        p = member(self.path, name)
        with os.fdopen(_open_regular(p), "rb") as f:  # the bytes checked are the bytes used
            data = f.read(self.manifest["files"][name]["bytes"] + 1)
        if hashlib.sha256(data).hexdigest() != self.file_sha256(name):
            raise BundleError(f"{p} changed after the bundle was verified (sha256 mismatch); copy "
                              "the bundle again")
        try:
            theta = read_npy(data, what=str(p))
        except DataError as exc:
            raise BundleError(f"{exc}; re-export the bundle") from None
        if theta.shape != (self.theta_size,) or theta.dtype != np.float32:
            raise BundleError(f"{p}: expected float32 ({self.theta_size},), got "
                              f"{theta.dtype} {theta.shape}")
        if not np.isfinite(theta).all():
            raise BundleError(f"{p}: theta0 holds NaN or inf; re-export the bundle")
        return theta


def _hash_member(root: Path, name: str, want: dict[str, Any]) -> dict[str, Any]:
    row = {"file": name, "sha256": want["sha256"], "bytes": want["bytes"], "status": "ok"}
    p = root / name
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return {**row, "status": "missing"}
    if stat.S_ISLNK(st.st_mode):
        return {**row, "status": "symbolic link (refused)"}
    if not stat.S_ISREG(st.st_mode):
        return {**row, "status": "not a regular file"}
    if st.st_size != want["bytes"]:
        return {**row, "actual_bytes": st.st_size,
                "status": "truncated" if st.st_size < want["bytes"] else "size mismatch"}
    try:
        fd = _open_regular(p)  # O_NOFOLLOW: a link swapped in after the lstat is refused too
    except OSError:
        return {**row, "status": "not a regular file"}
    h = hashlib.sha256()
    with os.fdopen(fd, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return row if h.hexdigest() == want["sha256"] else {**row, "status": "sha256 mismatch"}


def verify_files(path: Path, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-file check results: name, expected sha256/bytes, status ("ok", "missing",
    "truncated", "size mismatch", "sha256 mismatch", "symbolic link (refused)", ...).

    ``manifest`` must have passed :func:`edgeflow.runtime.manifest.validate` (plain names only).
    """
    return [_hash_member(path, name, want) for name, want in sorted(manifest["files"].items())]


def unlisted_files(path: Path, manifest: dict[str, Any]) -> list[str]:
    """Entries in the bundle directory the manifest does not list (never read by the runtime).

    The manifest, the signature and the default TensorRT engine cache ``engines/`` are expected.
    """
    listed = set(manifest["files"]) | set(KNOWN_EXTRAS)
    return sorted(p.name for p in path.iterdir() if p.name not in listed)


def _read_manifest_bytes(path: Path) -> bytes:
    mpath = path / MANIFEST
    try:
        st = os.lstat(mpath)
    except FileNotFoundError:
        raise BundleError(f"{mpath} is missing: {path} is not a bundle (or a half-written "
                          "one)") from None
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
        raise BundleError(f"{mpath} is a symbolic link or not a regular file; a bundle holds its "
                          "own manifest (copy the bundle with `cp -rL`)")
    if st.st_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{mpath} is {st.st_size} bytes (a manifest is a few KB; at most "
                          f"{MAX_MANIFEST_BYTES}); the bundle is damaged, re-export it")
    with os.fdopen(_open_regular(mpath), "rb") as f:
        return f.read(MAX_MANIFEST_BYTES + 1)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen = [k for i, (k, _) in enumerate(pairs) if k in dict(pairs[:i])]
        raise ValueError(f"duplicate key {seen[0][:40]!r}")
    return out


def read_manifest(path: str | Path, *, expect: str | None = None,
                  trusted_keys: Iterable[Any] | None = None) -> tuple[Path, dict[str, Any], str]:
    """(bundle dir, validated manifest, fingerprint); no file hashes.

    The pin (``expect``) and the signature (``trusted_keys``) are checked on the raw bytes before
    the JSON is parsed, so an untrusted manifest is refused before any of it is interpreted.
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise BundleError(f"bundle {path} does not exist or is not a directory; make one with "
                          "`edgeflow export`")
    raw = _read_manifest_bytes(path)
    fingerprint = fingerprint_of(raw)
    check_expected(path, fingerprint, expect)
    if trusted_keys is not None:
        verify_signature(path, fingerprint, trusted_keys)
    mpath = path / MANIFEST
    try:
        manifest = json.loads(raw, object_pairs_hook=_no_duplicates)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BundleError(f"{mpath} is not valid JSON ({str(exc)[:200]}); the bundle is damaged, "
                          "re-export it") from None
    return path, validate(manifest, where=str(mpath)), fingerprint


def load_bundle(path: str | Path, *, verify: bool = True, expect: str | None = None,
                trusted_keys: Iterable[Any] | None = None) -> Bundle:
    """Open a bundle, checking its manifest, pin and signature, and (``verify=True``) the size and
    sha256 of every listed file.

    ``expect``: the fingerprint (``sha256:...`` from ``edgeflow inspect``) the bundle must have.
    ``trusted_keys``: Ed25519 public keys (PEM paths/bytes) one of which must have signed it.
    """
    path, manifest, fingerprint = read_manifest(path, expect=expect, trusted_keys=trusted_keys)
    if verify:
        bad = [r for r in verify_files(path, manifest) if r["status"] != "ok"]
        if bad:
            what = "; ".join(f"{path / r['file']}: {r['status']}" for r in bad)
            raise BundleError(f"bundle {path} failed verification: {what}; re-export the bundle "
                              "or copy it again")
    return Bundle(path, manifest, fingerprint)


def update_bundle(path: str | Path, *, add: dict[str, str | Path] | None = None,
                  precisions: dict[str, str] | None = None,
                  manifest: dict[str, Any] | None = None) -> Bundle:
    """Rewrite a verified bundle with extra files / manifest entries, atomically.

    ``add`` maps bundle file names to source files (e.g. ``{"backbone.int8.onnx": tmp_path}``),
    ``precisions`` adds backbone variants (``{"int8": "backbone.int8.onnx"}``), ``manifest``
    updates top-level sections (e.g. ``{"metrics": {...}}``). The old bundle stays in place until
    the new one is complete. The result is a new bundle: a new fingerprint, and unsigned.
    """
    old = load_bundle(path)
    keep = {k: v for k, v in old.manifest.items()
            if k not in ("schema", "schema_version", "manifest_digest", "files")}
    keep.update(manifest or {})
    if precisions:
        keep["precisions"] = {**keep["precisions"], **precisions}
    with BundleWriter(old.path) as w:
        for name in old.manifest["files"]:
            shutil.copy2(member(old.path, name), w.path(name))
        for name, src in (add or {}).items():
            shutil.copy2(src, w.path(name))
            w.file_written(name)
        w.commit(keep)
    return load_bundle(old.path)
