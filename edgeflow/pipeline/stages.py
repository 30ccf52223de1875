"""Checkpointed stages: each stage's outputs live in ``<work>/stages/<name>/`` with a ``done.json``.

A stage's key hashes its own configuration and the keys of the stages it consumes, so a change
upstream invalidates everything downstream. With ``resume=True`` a stage whose ``done.json`` carries
the same key is skipped; otherwise it runs in a temporary folder that replaces the old one only once
it has finished, so an interruption never leaves a half-written stage behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DONE = "done.json"


@dataclass
class StageResult:
    name: str
    key: str
    dir: Path
    outputs: dict[str, Any]
    seconds: float
    skipped: bool


@dataclass
class StageRunner:
    """Runs named stages under ``work`` and remembers what finished."""

    work: Path
    resume: bool = False
    log: Callable[[str], None] = print
    results: dict[str, StageResult] = field(default_factory=dict)

    def key(self, name: str, parts: dict[str, Any], after: list[str]) -> str:
        payload = {"stage": name, "parts": parts, "after": {a: self.results[a].key for a in after}}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()

    def run(self, name: str, fn: Callable[[Path], dict[str, Any]], *, parts: dict[str, Any],
            after: list[str] | tuple[str, ...] = ()) -> StageResult:
        """Run ``fn(stage_dir) -> outputs`` unless a finished stage with the same key exists."""
        key = self.key(name, parts, list(after))
        final = self.work / "stages" / name
        done = final / DONE
        if self.resume and done.is_file():
            record = json.loads(done.read_text())
            if record.get("key") == key:
                self.log(f"stage {name}: up to date, reused")
                res = StageResult(name, key, final, record["outputs"], record["seconds"], True)
                self.results[name] = res
                return res
            self.log(f"stage {name}: inputs changed, running again")
        tmp = self.work / "stages" / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        t0 = time.perf_counter()
        outputs = fn(tmp)
        seconds = time.perf_counter() - t0
        (tmp / DONE).write_text(json.dumps({"key": key, "outputs": outputs, "seconds": seconds},
                                           indent=1, default=str))
        old = self.work / "stages" / f".{name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
        res = StageResult(name, key, final, outputs, seconds, False)
        self.results[name] = res
        return res
