"""BundleWriter: a bundle's files collected in a temporary directory and swapped in atomically.

Files go to a hidden temporary directory beside the destination and the finished directory is
swapped in with one ``renameat2(RENAME_EXCHANGE)`` (Linux), falling back to two renames. A crash or
Ctrl-C leaves either the previous bundle or the new one, never a mixture. The manifest is sealed
(schema version + ``manifest_digest``) and validated before it is written.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import hashlib
import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgeflow.errors import BundleError
from edgeflow.runtime.manifest import seal, validate

MANIFEST = "manifest.json"
# A file inside every temporary directory a BundleWriter makes: stale-directory cleanup removes
# only directories holding it, never a user's `.bundle.backup-2024` that happens to match the name
WRITER_MARKER = ".edgeflow-writer"
STALE_AFTER_S = 3600


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
        (self.tmp / WRITER_MARKER).write_bytes(b"")
        return self

    def _remove_stale(self) -> None:
        """Temporary directories a killed writer left (older than an hour) are garbage; only
        directories this class made (holding WRITER_MARKER, not links) are ever removed."""
        stem = glob.escape("." + self.output.name)
        for p in [*self.output.parent.glob(f"{stem}.tmp-*"), *self.output.parent.glob(f"{stem}.old-*")]:
            with contextlib.suppress(OSError):
                st = os.lstat(p)
                if not stat.S_ISDIR(st.st_mode) or time.time() - st.st_mtime < STALE_AFTER_S:
                    continue
                if (p / WRITER_MARKER).is_file() and not (p / WRITER_MARKER).is_symlink():
                    _remove_marked_last(p)
                else:  # killed between mkdtemp and the marker: rmdir removes it only if empty
                    os.rmdir(p)

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
            if p.name == WRITER_MARKER:
                continue
            with open(p, "rb") as f:
                os.fsync(f.fileno())
            files[p.name] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        body = json.loads(json.dumps({**manifest, "files": files}, default=_jsonable))
        manifest = seal(body)  # current schema version + manifest_digest over the content
        validate(manifest, where="the manifest being written")  # never write what cannot be read
        data = json.dumps(manifest, indent=2, sort_keys=False).encode()
        with open(self.tmp / MANIFEST, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        self.file_written(MANIFEST)
        _fsync_dir(self.tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp, 0o777 & ~umask)  # mkdtemp makes it private; a bundle is an ordinary dir
        # The marker stays until the swap: a kill before it leaves a marked (removable) temp dir;
        # a kill just after leaves the marker in the new bundle, unlisted and never read, gone
        # with the next rewrite. The temporary name then holds the previous bundle, ours to delete,
        # and is marked at once (kill -9 trials in benchmarks/bundle_probe.py left such
        # directories unmarked when the marker went before the swap).
        if self.output.exists():
            if not _exchange(self.tmp, self.output):
                old = self.output.parent / f".{self.output.name}.old-{os.getpid()}"
                os.replace(self.output, old)  # window: a crash here leaves the old bundle in `old`
                os.replace(self.tmp, self.output)
                self.tmp = old
            with contextlib.suppress(OSError):
                (self.tmp / WRITER_MARKER).write_bytes(b"")
        else:
            os.replace(self.tmp, self.output)
            self.tmp = None
        (self.output / WRITER_MARKER).unlink(missing_ok=True)
        _fsync_dir(self.output.parent)
        self.committed = True
        return self.output

    def __exit__(self, *exc: object) -> None:
        # After a commit self.tmp holds the previous bundle (or nothing); otherwise the half-written
        # new one. Either way it goes.
        if self.tmp is not None:
            _remove_marked_last(self.tmp)
            self.tmp = None


def _remove_marked_last(path: Path) -> None:
    """rmtree, the marker last: a kill midway leaves a directory that is still recognisably ours."""
    with contextlib.suppress(OSError):
        for p in path.iterdir():
            if p.name != WRITER_MARKER:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
    shutil.rmtree(path, ignore_errors=True)


def _jsonable(o: Any) -> Any:
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
