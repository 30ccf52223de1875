"""What a compile stage produced, recorded as sha256 + size, and checked before ``--resume`` reuses it.

A stage's ``done.json`` only says that the stage once finished; these records say that what it
left behind is still the same bytes. Paths are relative (POSIX) to the folder they are recorded
against, so a run folder that is moved or copied still resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from edgeflow.runtime.writer import sha256_file

FileRecord = dict[str, Any]  # {"sha256": hex, "bytes": int}


def record_file(path: Path) -> FileRecord:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def record_tree(folder: Path, *, skip: Iterable[str] = ()) -> dict[str, FileRecord]:
    """Every regular file under ``folder`` (recursively), except the top-level names in ``skip``."""
    skipped = set(skip)
    out: dict[str, FileRecord] = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if rel.parts[0] in skipped or not p.is_file() or p.is_symlink():
            continue
        out[rel.as_posix()] = record_file(p)
    return out


def record_paths(root: Path, paths: Iterable[Path]) -> dict[str, FileRecord]:
    """``paths`` (files a stage wrote outside its own folder, e.g. into the bundle), keyed by their
    path relative to ``root`` (absolute when outside it)."""
    out: dict[str, FileRecord] = {}
    for p in paths:
        p = Path(p).absolute()
        try:
            name = p.relative_to(root.absolute()).as_posix()
        except ValueError:
            name = str(p)
        out[name] = record_file(p)
    return dict(sorted(out.items()))


def problem(root: Path, files: dict[str, FileRecord]) -> str | None:
    """The first recorded file under ``root`` that is missing or changed, in words; else None.

    Sizes are compared first so a truncated file costs no hashing; the words name the file by its
    last component, as a log line should ("backbone.onnx sha256 mismatch").
    """
    for name, want in files.items():
        p = root / name
        label = Path(name).name
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            return f"{label} missing"
        except OSError as exc:
            return f"{label} unreadable ({exc.strerror})"
        if not stat.S_ISREG(st.st_mode):
            return f"{label} is not a regular file"
        if st.st_size != want.get("bytes"):
            return f"{label} is {st.st_size} bytes, recorded {want.get('bytes')}"
        try:
            digest = sha256_file(p)
        except OSError as exc:
            return f"{label} unreadable ({exc.strerror})"
        if digest != want.get("sha256"):
            return f"{label} sha256 mismatch"
    return None


def digest(*tables: dict[str, FileRecord]) -> str:
    """One sha256 over file tables: what a later stage's key depends on, so that a stage run again
    with different results invalidates the stages that consumed the old ones."""
    body = json.dumps(tables, sort_keys=True).encode()
    return hashlib.sha256(body).hexdigest()

