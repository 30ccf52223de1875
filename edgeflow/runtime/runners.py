"""Runners: one interface over inference backends (Polygraphy's shape, numpy in and out).

``Runner`` owns the lifecycle (``activate`` / ``infer`` / ``deactivate``, or a ``with`` block) and
checks every feed against the graph's tensor specs before the backend sees it, so every backend
fails the same way on bad input. Backends implement ``_activate``, ``_infer`` and ``_deactivate``.
``OrtRunner`` runs an ONNX file on ONNX Runtime; ``TrtRunner`` (``edgeflow.runtime.trt_runner``)
runs a TensorRT engine. Both are safe to call from several threads at once.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edgeflow.errors import BackendError, BundleError, DataError
from edgeflow.runtime.bundle import TensorSpec


class Runner:
    """Base class: lifecycle + input validation. Subclasses fill in the backend.

    Example::

        with OrtRunner("bundle/backbone.onnx") as r:
            out = r.infer({"images": x, "theta": theta0})["features"]
    """

    name = "runner"

    def __init__(self) -> None:
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []
        self.is_active = False

    # -- lifecycle ---------------------------------------------------------------------------
    def activate(self) -> Runner:
        if not self.is_active:
            self._activate()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            self._deactivate()
            self.is_active = False

    def __enter__(self) -> Runner:
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    # -- inference ----------------------------------------------------------------------------
    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph on ``feed`` (input name -> array); return output name -> array."""
        if not self.is_active:
            raise BackendError(f"{self.name} is not active; call activate() or use `with runner:`")
        return self._infer(self.check_feed(feed))

    def check_feed(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The feed as contiguous arrays of the right dtype, after checking names and shapes."""
        want = {s.name: s for s in self.inputs}
        missing = sorted(set(want) - set(feed))
        extra = sorted(set(feed) - set(want))
        if missing or extra:
            raise DataError(f"{self.name}: inputs must be {sorted(want)}; missing {missing}, "
                            f"unexpected {extra}")
        out = {}
        for name, spec in want.items():
            arr = np.asarray(feed[name])
            if arr.dtype != np.dtype(spec.dtype):
                if arr.dtype.kind != np.dtype(spec.dtype).kind:
                    raise DataError(f"{self.name}: input {name!r} must be {spec.dtype}, got {arr.dtype}")
                arr = arr.astype(spec.dtype)
            if arr.ndim != len(spec.shape):
                raise DataError(f"{self.name}: input {name!r} must have shape {list(spec.shape)}, "
                                f"got {list(arr.shape)}")
            for axis, (have, need) in enumerate(zip(arr.shape, spec.shape, strict=True)):
                if isinstance(need, int) and have != need:
                    raise DataError(f"{self.name}: input {name!r} must have shape "
                                    f"{list(spec.shape)}, got {list(arr.shape)} (axis {axis})")
            if 0 in arr.shape:
                raise DataError(f"{self.name}: input {name!r} is empty {list(arr.shape)}")
            out[name] = np.ascontiguousarray(arr)
        return out

    # -- backend hooks ------------------------------------------------------------------------
    def _activate(self) -> None:
        raise NotImplementedError

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _deactivate(self) -> None:
        pass


def _ort_type(t: str) -> str:
    table = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
             "tensor(int32)": "int32", "tensor(double)": "float64", "tensor(uint8)": "uint8",
             "tensor(int8)": "int8", "tensor(bool)": "bool"}
    return table.get(t, t)


def default_threads() -> int:
    """``EDGEFLOW_THREADS`` if set, else every core this process may use."""
    env = os.environ.get("EDGEFLOW_THREADS")
    if env:
        return max(1, int(env))
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class OrtRunner(Runner):
    """An ONNX file on ONNX Runtime (CPU by default; ``providers`` to pick others).

    ONNX Runtime's ``InferenceSession.run`` is thread-safe, so one runner serves many threads.
    """

    name = "onnxruntime"

    def __init__(self, path: str | Path, *, threads: int | None = None,
                 providers: list[str] | None = None, arena: bool = False,
                 sha256: str | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        # A bundle graph: read once (no symlink followed), checked against the manifest's hash
        # and handed to ONNX Runtime as bytes, so the graph that runs is the one verified (no
        # window to swap the file after load_bundle hashed it) and it cannot pull in unlisted
        # files as external data (ORT refuses external data for a model given as bytes).
        self.sha256 = sha256
        self.arena = arena
        self.threads = threads or default_threads()
        self.providers = providers or ["CPUExecutionProvider"]
        self._session = None

    def _activate(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendError("onnxruntime is not installed; `pip install onnxruntime`") from exc
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        if not self.arena:
            # ORT's arena keeps the largest batch's activations forever; without it memory goes back
            # after each run (lower peak RSS on 8 GB devices, measured ~no latency cost here).
            opts.enable_cpu_mem_arena = False
        model: str | bytes = str(self.path) if self.sha256 is None else self._verified_bytes()
        try:
            self._session = ort.InferenceSession(model, opts, providers=self.providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/NoSuchFile types
            raise BackendError(f"ONNX Runtime cannot load {self.path}: {exc}") from exc
        self.inputs = [TensorSpec(i.name, tuple(i.shape), _ort_type(i.type))
                       for i in self._session.get_inputs()]
        self.outputs = [TensorSpec(o.name, tuple(o.shape), _ort_type(o.type))
                        for o in self._session.get_outputs()]

    def _verified_bytes(self) -> bytes:
        import hashlib

        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError as exc:
            raise BundleError(f"cannot open {self.path} ({exc.strerror}); a bundle graph must be a "
                              "regular file, not a symbolic link") from None
        with os.fdopen(fd, "rb") as f:
            data = f.read()
        if hashlib.sha256(data).hexdigest() != self.sha256:
            raise BundleError(f"{self.path} changed after the bundle was verified (sha256 mismatch); "
                              "copy the bundle again")
        return data

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self.outputs]
        try:
            values = self._session.run(names, feed)
        except Exception as exc:
            raise BackendError(f"ONNX Runtime failed on {self.path.name}: {exc}") from exc
        return dict(zip(names, values, strict=True))

    def _deactivate(self) -> None:
        self._session = None
