"""Checkpointed stages: each stage's outputs live in ``<work>/stages/<name>/`` with a ``done.json``.

A stage's key hashes its own configuration and, for each stage it consumes, that stage's key and
the digest of the files it produced, so a change upstream (a new option, or the same stage run
again with other results) invalidates everything downstream. ``done.json`` records the sha256 and
size of every file the stage left in its folder and of the files it wrote elsewhere (``products``,
e.g. bundle files). With ``resume=True`` a stage is reused only when its key matches *and* those
files are still the recorded bytes; otherwise it runs again, and the log says why. A stage runs in a
temporary folder that replaces the old one only once it has finished, so an interruption never
leaves a half-written stage behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeflow.pipeline import outputs as recorded

DONE = "done.json"


@dataclass
class StageResult:
    name: str
    key: str
    dir: Path
    outputs: dict[str, Any]
    seconds: float
    skipped: bool
    digest: str = ""  # sha256 over the recorded files: what downstream keys depend on
    products: dict[str, Any] = field(default_factory=dict)  # files written outside ``dir``


@dataclass
class StageRunner:
    """Runs named stages under ``work`` and remembers what finished."""

    work: Path
    resume: bool = False
    log: Callable[[str], None] = print
    results: dict[str, StageResult] = field(default_factory=dict)

    def upstream(self, after: Iterable[str]) -> dict[str, list[str]]:
        return {a: [self.results[a].key, self.results[a].digest] for a in after}

    def key(self, name: str, parts: dict[str, Any], after: list[str]) -> str:
        payload = {"stage": name, "parts": parts, "after": self.upstream(after)}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()

    def run(self, name: str, fn: Callable[[Path], dict[str, Any]], *, parts: dict[str, Any],
            after: list[str] | tuple[str, ...] = (),
            products: Callable[[dict[str, Any]], Iterable[Path]] | None = None,
            check: Callable[[dict[str, Any]], str | None] | None = None) -> StageResult:
        """Run ``fn(stage_dir) -> outputs`` unless a finished stage with the same key exists and its
        files are intact.

        ``products(outputs)``: files the stage wrote outside its folder (recorded and verified too).
        ``check(record)``: a further reason not to reuse a finished stage (None: reusable), e.g. a
        bundle manifest that no longer lists what the stage put in the bundle.
        """
        key = self.key(name, parts, list(after))
        final = self.work / "stages" / name
        if self.resume and (final / DONE).is_file():
            record = _read_record(final / DONE)
            why = self._stale(record, key, final, after, check)
            if why is None:
                assert record is not None
                self.log(f"stage {name}: up to date, reused")
                res = StageResult(name, key, final, record["outputs"], record["seconds"], True,
                                  recorded.digest(record["files"], record["products"]),
                                  record["products"])
                self.results[name] = res
                return res
            self.log(f"stage {name}: {why}, running again")
        tmp = self.work / "stages" / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        t0 = time.perf_counter()
        outputs = fn(tmp)
        seconds = time.perf_counter() - t0
        own = recorded.record_tree(tmp, skip=[DONE])
        made = recorded.record_paths(self.work, products(outputs)) if products else {}
        record = {"key": key, "after": self.upstream(after), "outputs": outputs, "seconds": seconds,
                  "files": own, "products": made}
        record = json.loads(json.dumps(record, default=str))  # as it is read back on resume
        _write_record(tmp / DONE, record)
        old = self.work / "stages" / f".{name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
        res = StageResult(name, key, final, outputs, seconds, False,
                          recorded.digest(own, made), made)
        self.results[name] = res
        return res

    def _stale(self, record: dict[str, Any] | None, key: str, final: Path, after: Iterable[str],
               check: Callable[[dict[str, Any]], str | None] | None) -> str | None:
        """Why a finished stage cannot be reused, in words for the log; None when it can."""
        if record is None:
            return f"{DONE} unreadable or damaged"
        if record.get("key") != key:
            before = record.get("after") or {}
            moved = [a for a, stamp in self.upstream(after).items() if before.get(a) != stamp]
            return (f"{', '.join(moved)} produced other outputs" if moved and before
                    else "inputs changed")
        if "files" not in record or "products" not in record:
            return "outputs not recorded (an older run), cannot verify them"
        damage = (recorded.problem(final, record["files"])
                  or recorded.problem(self.work, record["products"])
                  or (check(record) if check else None))
        return f"outputs damaged ({damage})" if damage else None


def _write_record(path: Path, record: dict[str, Any]) -> None:
    """``record`` with a sha256 over its own content, so an edited or damaged done.json is noticed
    (a flipped digit in a stored metric would otherwise be reused silently)."""
    body = {**record, "record_sha256": _record_digest(record)}
    path.write_text(json.dumps(body, indent=1))


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict):
        return None
    stored = record.pop("record_sha256", None)
    if stored is not None and stored != _record_digest(record):
        return None
    return record


def _record_digest(record: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
