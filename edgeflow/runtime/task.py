"""Task: an adapted task as a value (theta, prototypes, class ids), saved and loaded as .npz.

A task file may come from anywhere (a shared drive, another robot), so :meth:`Task.load` checks it
before trusting it: file size, the zip members' *uncompressed* sizes before anything is
decompressed (a zip bomb is refused unread), the member names, dtypes, shapes, lengths and
finiteness, and the metadata's types. Arrays are loaded with ``allow_pickle=False``. Whether the
task fits a given bundle (theta length, feature width, fingerprint) is :meth:`Task.check_fits`.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import tempfile
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeflow.errors import DataError
from edgeflow.runtime.npy import read_npy
from edgeflow.runtime.openset import OpenSetStats
from edgeflow.runtime.support import Support

TASK_FORMAT = "edgeflow-task/2"  # 2 adds the support cache and the open-set statistics
READABLE_FORMATS = ("edgeflow-task/1", TASK_FORMAT)
MEMBERS = ("theta.npy", "prototypes.npy", "classes.npy", "meta.npy")
OPENSET_MEMBERS = ("openset_mean.npy", "openset_std.npy", "openset_scores.npy")
SUPPORT_MEMBER = re.compile(r"support_\d{1,3}\.npy|support_labels\.npy")
# theta + W prototypes are kilobytes; the support cache adds tens of KB per support image
MAX_TASK_BYTES = 256 << 20
MAX_MEMBER_BYTES = 128 << 20
MAX_INFLATED_BYTES = 512 << 20
MAX_META_BYTES = 1 << 20
MAX_WAYS = 100_000
TMP_TAG = ".edgeflow-tmp-"  # Task.save's temporary files: `.NAME.edgeflow-tmp-XXXX.npz`
STALE_AFTER_S = 3600


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a, copy=True)
    a.flags.writeable = False
    return a


def check_arrays(theta: Any, protos: Any, classes: Any, *, what: str) -> None:
    """Raise :class:`DataError` unless theta (P,), prototypes (W, D) are finite float32 and
    classes (W,) are distinct int64."""
    for name, a, kind, ndim in (("theta", theta, "f", 1), ("prototypes", protos, "f", 2),
                                ("classes", classes, "i", 1)):
        if not isinstance(a, np.ndarray) or a.dtype.kind != kind or a.ndim != ndim:
            got = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
            raise DataError(f"{what}: {name} must be a {ndim}-d "
                            f"{'float32' if kind == 'f' else 'int64'} array, got {got}")
        if a.size == 0:
            raise DataError(f"{what}: {name} is empty")
        if kind == "f" and not np.isfinite(a).all():
            raise DataError(f"{what}: {name} holds NaN or inf; adapt the task again")
    if len(classes) != len(protos) or len(classes) > MAX_WAYS:
        raise DataError(f"{what}: {len(protos)} prototypes but {len(classes)} class ids")
    if len(np.unique(classes)) != len(classes):
        raise DataError(f"{what}: class ids repeat ({classes[:10].tolist()}); adapt the task again")


@dataclass(frozen=True)
class Task:
    """An adapted task: theta, the class prototypes at that theta, and the caller's class ids."""

    theta: np.ndarray  # (P,) float32
    prototypes: np.ndarray  # (W, D) float32, at theta
    classes: np.ndarray  # (W,) int64: the labels the caller used, in prototype order
    bundle: str  # fingerprint (sha256 of manifest.json) of the bundle that made it
    class_names: tuple[str, ...] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    # what lets the task grow without its images (edgeflow.runtime.support) and say "none of
    # these" (edgeflow.runtime.openset); None in tasks of the first format
    support: Support | None = field(default=None, repr=False, compare=False)
    openset: OpenSetStats | None = field(default=None, repr=False, compare=False)

    @property
    def ways(self) -> int:
        return len(self.classes)

    def check_fits(self, *, fingerprint: str, theta_size: int, feature_dim: int | None) -> None:
        """Raise :class:`DataError` unless this task was made by (and fits) that bundle."""
        check_arrays(self.theta, self.prototypes, self.classes, what="task")
        if self.bundle.removeprefix("sha256:") != fingerprint.removeprefix("sha256:"):
            raise DataError("this task was adapted with another bundle (fingerprint "
                            f"{self.bundle[:19]} != {fingerprint[:19]}); adapt it again with "
                            "this bundle")
        if self.theta.shape != (theta_size,):
            raise DataError(f"task theta has {self.theta.shape[0]} values but the bundle's theta has "
                            f"{theta_size}; adapt the task again with this bundle")
        if feature_dim is not None and self.prototypes.shape[1] != feature_dim:
            raise DataError(f"task prototypes are {self.prototypes.shape[1]}-d but the bundle's "
                            f"features are {feature_dim}-d; adapt the task again with this bundle")

    def save(self, path: str | Path) -> Path:
        """Write the task as .npz (no pickles), atomically; removes temporary files an earlier
        killed save left beside it (only ours, older than an hour)."""
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(".npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(path)
        meta = {"format": TASK_FORMAT, "bundle": self.bundle, "info": self.info,
                "class_names": list(self.class_names) if self.class_names is not None else None}
        extra: dict[str, np.ndarray] = {}
        if self.support is not None:
            extra, names = self.support.members()
            meta.update(names)
        if self.openset is not None:
            extra.update(openset_mean=self.openset.mean, openset_std=self.openset.std,
                         openset_scores=self.openset.loo_scores)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TMP_TAG}", suffix=".npz", dir=path.parent)
        os.close(fd)
        try:
            np.savez(tmp, theta=self.theta, prototypes=self.prototypes, classes=self.classes,
                     meta=np.asarray(json.dumps(meta)), **extra)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | Path) -> Task:
        """Read and check a task file (see the module docstring); errors name the file and fix."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"task file {path} does not exist; make one with `edgeflow adapt`")
        size = path.stat().st_size
        if size == 0:
            raise DataError(f"task file {path} is empty (0 bytes; a save that was killed?); make it "
                            "again with `edgeflow adapt`")
        if size > MAX_TASK_BYTES:
            raise DataError(f"task file {path} is {size} bytes (at most {MAX_TASK_BYTES}); it is not "
                            "an EdgeFlow task")
        arrays = _read_members(path)
        meta = _meta(arrays.pop("meta"), path)
        theta, protos, classes = arrays["theta"], arrays["prototypes"], arrays["classes"]
        check_arrays(theta, protos, classes, what=str(path))
        names = meta.get("class_names")
        if names is not None and (not isinstance(names, list) or len(names) != len(classes)
                                  or not all(isinstance(n, str) and len(n) <= 256 for n in names)):
            raise DataError(f"{path}: class_names must be {len(classes)} strings (one per class)")
        support = Support.from_members(arrays, meta, what=str(path)) if "support_names" in meta \
            else None
        if support is not None and set(support.labels.tolist()) != set(classes.tolist()):
            raise DataError(f"{path}: the support cache's labels are not the task's classes")
        openset = None
        present = [m[:-4] in arrays for m in OPENSET_MEMBERS]
        if any(present) and not all(present):  # all three or none (found by bundle_probe)
            raise DataError(f"{path}: its open-set statistics are incomplete; adapt the task again")
        if all(present):
            openset = OpenSetStats(mean=arrays["openset_mean"], std=arrays["openset_std"],
                                   loo_scores=arrays["openset_scores"])
            ok = all(a.dtype == np.float32 and a.ndim == 1 and np.isfinite(a).all()
                     for a in (openset.mean, openset.std, openset.loo_scores))
            if not ok or len(openset.mean) != len(classes) or len(openset.std) != len(classes) \
                    or (openset.std <= 0).any():
                raise DataError(f"{path}: its open-set statistics are malformed; adapt the task again")
        return cls(theta=_frozen(theta), prototypes=_frozen(protos), classes=_frozen(classes),
                   bundle=meta["bundle"], class_names=tuple(names) if names is not None else None,
                   info=meta["info"], support=support, openset=openset)


def _read_members(path: Path) -> dict[str, np.ndarray]:
    bad = f"{path} is not an EdgeFlow task file"
    try:
        with zipfile.ZipFile(path) as z:
            infos = {i.filename: i for i in z.infolist()}
            extra = [n for n in infos if n not in MEMBERS]
            if not set(MEMBERS) <= set(infos) or any(
                    n not in OPENSET_MEMBERS and not SUPPORT_MEMBER.fullmatch(n) for n in extra):
                raise DataError(f"{bad}: it holds {sorted(infos)[:6]}, expected {list(MEMBERS)} "
                                "(+ support and open-set members)")
            total = sum(i.file_size for i in infos.values())
            if total > MAX_INFLATED_BYTES:
                raise DataError(f"{bad}: its members inflate to {total} bytes (at most "
                                f"{MAX_INFLATED_BYTES})")
            for i in infos.values():  # sizes as the zip directory states them, before inflating
                if i.file_size > MAX_MEMBER_BYTES:
                    raise DataError(f"{bad}: member {i.filename} inflates to {i.file_size} bytes "
                                    f"(at most {MAX_MEMBER_BYTES})")
            # zipfile stops at the stated size and checks the CRC; read_npy checks each header
            return {name[:-4]: read_npy(z.read(name), what=f"{path}:{name}") for name in infos}
    except DataError as exc:
        if str(exc).startswith(bad):
            raise
        raise DataError(f"{bad}: {exc}") from None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError, RuntimeError,
            NotImplementedError) as exc:  # NotImplementedError: a compression zipfile lacks
        raise DataError(f"{bad} ({type(exc).__name__}: {str(exc)[:200]})") from None


def _meta(arr: np.ndarray, path: Path) -> dict[str, Any]:
    if arr.dtype.kind != "U" or arr.ndim != 0 or arr.itemsize > MAX_META_BYTES:
        raise DataError(f"{path}: its metadata is not a JSON string; not an EdgeFlow task file")
    try:
        meta = json.loads(str(arr))
    except (ValueError, RecursionError) as exc:
        raise DataError(f"{path}: its metadata is not valid JSON ({str(exc)[:100]})") from None
    if not isinstance(meta, dict) or meta.get("format") not in READABLE_FORMATS:
        got = meta.get("format") if isinstance(meta, dict) else None
        raise DataError(f"{path} has task format {str(got)[:40]!r}, expected {TASK_FORMAT}")
    if not isinstance(meta.get("bundle"), str) or len(meta["bundle"]) > 80:
        raise DataError(f"{path}: its metadata names no bundle fingerprint; adapt the task again")
    if not isinstance(meta.get("info", {}), dict):
        raise DataError(f"{path}: its metadata 'info' is not an object")
    meta.setdefault("info", {})
    return meta


def _remove_stale(path: Path) -> None:
    """Temporary files a killed :meth:`Task.save` left beside ``path`` (older than an hour).

    Only names this module makes are touched: ``.NAME.edgeflow-tmp-*.npz``, and the older
    ``.NAME.XXXXXXXX.npz`` of earlier versions only when the file is a task archive."""
    legacy = re.compile(re.escape(f".{path.name}.") + r"[a-z0-9_]{8}\.npz")
    for p in path.parent.glob(f"{glob.escape('.' + path.name)}.*.npz"):
        with contextlib.suppress(OSError):
            if p.is_symlink() or not p.is_file() or time.time() - p.stat().st_mtime < STALE_AFTER_S:
                continue
            ours = p.name.startswith(f".{path.name}{TMP_TAG}")
            if not ours and legacy.fullmatch(p.name):
                with open(p, "rb") as f:  # a zip whose first member is theta.npy: np.savez's task
                    head = f.read(30 + len(MEMBERS[0]))
                ours = head[:4] == b"PK\x03\x04" and head[30:] == MEMBERS[0].encode()
            if ours:
                p.unlink()


def merged_class_names(task: Task, labels: np.ndarray, class_names: Sequence[str] | None
                       ) -> dict[int, str] | None:
    """The names of ``task``'s classes and of the ``labels`` an update adds (None: a task without
    names); a clear error when a new class has no name or a known one would be renamed."""
    if task.class_names is None:
        if class_names is not None:
            raise DataError("the task has no class names; update it with labels only")
        return None
    names = {int(c): n for c, n in zip(task.classes, task.class_names, strict=True)}
    if class_names is None:
        new = sorted({int(c) for c in labels} - set(names))
        if new:
            raise DataError(f"new classes {new[:5]} need class_names (the task has names)")
        return names
    for c in np.unique(labels):
        if not 0 <= c < len(class_names):
            raise DataError(f"label {int(c)} has no entry in class_names ({len(class_names)})")
        given = str(class_names[int(c)])
        if names.get(int(c), given) != given:
            raise DataError(f"label {int(c)} is {names[int(c)]!r} in the task but {given!r} here")
        names[int(c)] = given
    return names
