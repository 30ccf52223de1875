"""The engine cache: TensorRT engines on disk, keyed by everything that makes an engine valid.

An engine only runs on the TensorRT version and GPU that built it, and only for the ONNX and
options it was built from, so the key covers all of them (:func:`cache_key`). Several keys of the
same graph live side by side (fp16 and int8, a ``build --target`` engine and a default Session's),
so switching between them never rebuilds; the least recently used engines beyond ``max_engines``
are evicted. Builder and loader are passed in, so this module needs no TensorRT and is tested
everywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from edgeflow.errors import BackendError, ConfigError
from edgeflow.runtime.bundle import TensorSpec, sha256_file
from edgeflow.runtime.trt_options import BuildOptions, DeviceInfo, FlagPlan

Builder = Callable[..., tuple[bytes, bytes]]  # (onnx, inputs, options, plan, timing) -> (engine, timing)
# engine bytes -> None when this machine's TensorRT loads it, else the reason it does not
Loader = Callable[[bytes], "str | None"]


def cache_key(device: DeviceInfo, onnx_sha256: str, options: BuildOptions) -> str:
    """sha256 over (TensorRT version, GPU name, SM, ONNX sha256, build options as JSON)."""
    payload = json.dumps({"trt": device.trt_version, "gpu": device.gpu_name,
                          "sm": list(device.compute_capability), "onnx": onnx_sha256,
                          "options": options.to_dict()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class EngineCache:
    """Engines under ``root`` named by graph and cache key, each with a JSON sidecar.

    ``get`` returns the cached engine when its key matches and ``loader`` accepts it; a damaged or
    foreign engine is rebuilt with ``builder``. Engines of other keys stay (up to ``max_engines``
    in the folder, least recently used evicted first). Timing caches are kept beside the engines,
    one per (TensorRT version, GPU).
    """

    def __init__(self, root: str | Path, *, max_engines: int = 12) -> None:
        if max_engines < 1:
            raise ConfigError(f"max_engines must be >= 1, got {max_engines}")
        self.root = Path(root)
        self.max_engines = max_engines

    def engine_path(self, graph: str, key: str) -> Path:
        return self.root / f"{graph}-{key[:24]}.engine"

    def timing_cache_path(self, device: DeviceInfo) -> Path:
        tag = hashlib.sha256(f"{device.trt_version}|{device.gpu_name}|{device.sm}".encode())
        return self.root / f"timing-{tag.hexdigest()[:16]}.cache"

    def engines(self) -> list[Path]:
        """Cached engine files, least recently used first."""
        return sorted(self.root.glob("*.engine"), key=lambda p: p.stat().st_mtime_ns)

    def get(self, graph: str, onnx_path: Path, inputs: list[TensorSpec], options: BuildOptions,
            device: DeviceInfo, *, builder: Builder, loader: Loader, plan: FlagPlan,
            force: bool = False) -> tuple[Path, str]:
        """(engine path, "cached" | "built" | "rebuilt: <why>")."""
        self.root.mkdir(parents=True, exist_ok=True)
        onnx_sha = sha256_file(onnx_path)
        key = cache_key(device, onnx_sha, options)
        path = self.engine_path(graph, key)
        side = path.with_suffix(".json")
        why = "built"
        if path.is_file() and not force:
            try:
                meta = json.loads(side.read_text()) if side.is_file() else {}
            except (OSError, ValueError):
                meta = {}
            data = path.read_bytes()
            if meta.get("key") != key:
                why = "rebuilt: sidecar missing or for another key"
            elif meta.get("engine_sha256") != hashlib.sha256(data).hexdigest():
                why = "rebuilt: engine file changed or truncated"
            else:
                refused = loader(data)
                if refused is None:
                    os.utime(path)  # most recently used: the last to be evicted
                    return path, "cached"
                why = f"rebuilt: TensorRT could not deserialize the cached engine ({refused})"
        elif force and path.is_file():
            why = "rebuilt: forced"
        tc_path = self.timing_cache_path(device)
        timing = tc_path.read_bytes() if tc_path.is_file() else b""
        data, new_timing = builder(onnx_path, inputs, options, plan, timing)
        refused = loader(data)
        if refused is not None:
            raise BackendError(f"TensorRT built an engine for {graph} that it cannot load: {refused}")
        _atomic_write(path, data)
        _atomic_write(side, json.dumps({
            "key": key, "graph": graph, "onnx_sha256": onnx_sha, "trt_version": device.trt_version,
            "gpu": device.gpu_name, "sm": device.sm, "options": options.to_dict(),
            "flags": list(plan.flags), "cleared_flags": list(plan.clear), "dla_core": plan.dla_core,
            "calibrated": plan.calibrate, "notes": list(plan.notes),
            "engine_sha256": hashlib.sha256(data).hexdigest()}, indent=2).encode())
        if new_timing:
            _atomic_write(tc_path, new_timing)
        self._evict(keep=path)
        return path, why

    def _evict(self, *, keep: Path) -> None:
        """Drop the least recently used engines beyond ``max_engines`` (never ``keep``)."""
        extra = len(self.engines()) - self.max_engines
        for old in self.engines():
            if extra <= 0:
                break
            if old != keep:
                old.unlink(missing_ok=True)
                old.with_suffix(".json").unlink(missing_ok=True)
                extra -= 1
