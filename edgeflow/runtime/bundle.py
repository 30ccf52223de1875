"""The bundle: a directory of ONNX graphs + ``theta0.npy`` + ``manifest.json`` (torch-free).

This module owns the on-disk format, both directions: the exporter (``edgeflow.export``) writes
bundles through :class:`BundleWriter`, and the device loads them with :func:`load_bundle`. Keeping
the format here (and not in the torch-side exporter) means the device never needs torch to read it.

Writing is atomic: files go to a hidden temporary directory beside the destination and the finished
directory is swapped in with one ``renameat2(RENAME_EXCHANGE)`` (Linux), falling back to two
renames. A crash or Ctrl-C leaves either the previous bundle or the new one, never a mixture.
Loading checks the schema and the size and sha256 of every file the manifest lists; a missing,
truncated or tampered file raises :class:`BundleError` naming it.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeflow.data.transforms import Preprocess
from edgeflow.errors import BundleError

SCHEMA = "edgeflow-bundle"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
GRAPHS = ("backbone", "task_encoder", "drift")
METRIC_SCALE = 10.0  # cosine logits are scaled by this (edgeflow.adapt.prototype_logits)


def sha256_file(path: str | Path, *, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsynced
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux renameat2); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return rc == 0


class BundleWriter:
    """Collect a bundle's files in a temporary directory; ``commit(manifest)`` swaps it in.

    Use as a context manager; leaving the block without ``commit`` (an exception, Ctrl-C) removes
    the temporary directory and leaves any existing bundle at ``output`` untouched.

    Example::

        with BundleWriter("out/bundle") as w:
            np.save(w.path("theta0.npy"), theta0)
            w.commit({"graphs": {...}, ...})
    """

    def __init__(self, output: str | Path, *, on_file: Callable[[str], None] | None = None) -> None:
        self.output = Path(output).expanduser().absolute()
        if self.output.exists() and not self.output.is_dir():
            raise BundleError(f"{self.output} exists and is not a directory; choose another --output")
        self.on_file = on_file
        self.tmp: Path | None = None
        self.committed = False

    def __enter__(self) -> BundleWriter:
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self._remove_stale()
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.output.name}.tmp-", dir=self.output.parent))
        return self

    def _remove_stale(self) -> None:
        """Temporary directories left by a killed writer (older than an hour) are garbage."""
        for p in self.output.parent.glob(f".{self.output.name}.*-*"):
            with contextlib.suppress(OSError):
                if time.time() - p.stat().st_mtime > 3600:
                    shutil.rmtree(p, ignore_errors=True)

    def path(self, name: str) -> Path:
        """Where to write bundle file ``name`` (inside the temporary directory)."""
        if self.tmp is None:
            raise BundleError("BundleWriter.path() called outside its `with` block")
        if "/" in name or name.startswith(".") or name == MANIFEST:
            raise BundleError(f"invalid bundle file name {name!r}")
        return self.tmp / name

    def file_written(self, name: str) -> None:
        if self.on_file is not None:
            self.on_file(name)

    def commit(self, manifest: dict[str, Any]) -> Path:
        """Hash every file, write ``manifest.json`` and swap the directory into place."""
        assert self.tmp is not None
        files = {}
        for p in sorted(self.tmp.iterdir()):
            with open(p, "rb") as f:
                os.fsync(f.fileno())
            files[p.name] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        manifest = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, **manifest, "files": files}
        data = json.dumps(manifest, indent=2, sort_keys=False, default=_jsonable).encode()
        with open(self.tmp / MANIFEST, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        self.file_written(MANIFEST)
        _fsync_dir(self.tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp, 0o777 & ~umask)  # mkdtemp makes it private; a bundle is an ordinary dir
        if self.output.exists():
            if not _exchange(self.tmp, self.output):
                old = self.output.parent / f".{self.output.name}.old-{os.getpid()}"
                os.replace(self.output, old)  # window: a crash here leaves the old bundle in `old`
                os.replace(self.tmp, self.output)
                self.tmp = old
        else:
            os.replace(self.tmp, self.output)
            self.tmp = None
        _fsync_dir(self.output.parent)
        self.committed = True
        return self.output

    def __exit__(self, *exc: object) -> None:
        # After a commit self.tmp holds the previous bundle (or nothing); otherwise the half-written
        # new one. Either way it goes.
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


def _jsonable(o: Any) -> Any:
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


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
    """A verified bundle on disk. Build with :func:`load_bundle`."""

    def __init__(self, path: Path, manifest: dict[str, Any], manifest_sha256: str) -> None:
        self.path = path
        self.manifest = manifest
        self.fingerprint = manifest_sha256  # tasks remember which bundle made them

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
            return self.path / self.precisions[precision]
        if graph not in self.manifest["graphs"]:
            raise BundleError(f"bundle {self.path} has no {graph} graph (exported without a drift?)")
        return self.path / self.manifest["graphs"][graph]["file"]

    def tensors(self, graph: str) -> tuple[list[TensorSpec], list[TensorSpec]]:
        g = self.manifest["graphs"][graph]
        return ([TensorSpec.from_dict(d) for d in g["inputs"]],
                [TensorSpec.from_dict(d) for d in g["outputs"]])

    def theta0(self) -> np.ndarray:
        name = self.manifest["theta"]["file"]
        theta = np.load(self.path / name, allow_pickle=False)
        if theta.shape != (self.theta_size,) or theta.dtype != np.float32:
            raise BundleError(f"{self.path / name}: expected float32 ({self.theta_size},), got "
                              f"{theta.dtype} {theta.shape}")
        return theta


def verify_files(path: Path, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-file check results: name, expected sha256/bytes, status ("ok", "missing",
    "truncated", "size mismatch", "sha256 mismatch")."""
    out = []
    for name, want in sorted(manifest.get("files", {}).items()):
        p = path / name
        row = {"file": name, "sha256": want["sha256"], "bytes": want["bytes"], "status": "ok"}
        if not p.is_file():
            row["status"] = "missing"
        else:
            size = p.stat().st_size
            if size != want["bytes"]:
                row["status"] = "truncated" if size < want["bytes"] else "size mismatch"
                row["actual_bytes"] = size
            elif sha256_file(p) != want["sha256"]:
                row["status"] = "sha256 mismatch"
        out.append(row)
    return out


def read_manifest(path: str | Path) -> tuple[Path, dict[str, Any], str]:
    """(bundle dir, manifest, manifest sha256) after checking the schema; no file hashes."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise BundleError(f"bundle {path} does not exist or is not a directory; make one with "
                          "`edgeflow export`")
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"{mpath} is missing: {path} is not a bundle (or a half-written one)")
    raw = mpath.read_bytes()
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{mpath} is not valid JSON ({exc}); the bundle is damaged, re-export "
                          "it") from exc
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise BundleError(f"{mpath} is not an EdgeFlow bundle manifest (schema "
                          f"{manifest.get('schema') if isinstance(manifest, dict) else None!r})")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(f"{mpath} has schema version {version}; this runtime reads version "
                          f"{SCHEMA_VERSION}; re-export the bundle with this EdgeFlow version")
    for key in ("files", "graphs", "precisions", "preprocess", "theta", "adaptation"):
        if key not in manifest:
            raise BundleError(f"{mpath} lacks the {key!r} section; re-export the bundle")
    return path, manifest, hashlib.sha256(raw).hexdigest()


def load_bundle(path: str | Path, *, verify: bool = True) -> Bundle:
    """Open a bundle, checking its schema and (``verify=True``) every file's size and sha256."""
    path, manifest, digest = read_manifest(path)
    if verify:
        bad = [r for r in verify_files(path, manifest) if r["status"] != "ok"]
        if bad:
            what = "; ".join(f"{path / r['file']}: {r['status']}" for r in bad)
            raise BundleError(f"bundle {path} failed verification: {what}; re-export the bundle "
                              "or copy it again")
    listed = set(manifest["files"])
    needed = {g["file"] for g in manifest["graphs"].values()} | set(manifest["precisions"].values())
    needed.add(manifest["theta"]["file"])
    unlisted = sorted(needed - listed)
    if unlisted:
        raise BundleError(f"bundle {path}: manifest refers to files it does not hash: {unlisted}")
    return Bundle(path, manifest, digest)


def update_bundle(path: str | Path, *, add: dict[str, str | Path] | None = None,
                  precisions: dict[str, str] | None = None,
                  manifest: dict[str, Any] | None = None) -> Bundle:
    """Rewrite a verified bundle with extra files / manifest entries, atomically.

    ``add`` maps bundle file names to source files (e.g. ``{"backbone.int8.onnx": tmp_path}``),
    ``precisions`` adds backbone variants (``{"int8": "backbone.int8.onnx"}``), ``manifest``
    updates top-level sections (e.g. ``{"metrics": {...}}``). The old bundle stays in place until
    the new one is complete.
    """
    old = load_bundle(path)
    keep = {k: v for k, v in old.manifest.items()
            if k not in ("schema", "schema_version", "files")}
    keep.update(manifest or {})
    if precisions:
        keep["precisions"] = {**keep["precisions"], **precisions}
    with BundleWriter(old.path) as w:
        for name in old.manifest["files"]:
            shutil.copy2(old.path / name, w.path(name))
        for name, src in (add or {}).items():
            shutil.copy2(src, w.path(name))
            w.file_written(name)
        w.commit(keep)
    return load_bundle(old.path)
