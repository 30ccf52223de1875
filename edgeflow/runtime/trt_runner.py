"""TrtRunner: a TensorRT engine behind the Runner interface (TensorRT 10 named-tensor API, pycuda).

``tensorrt`` and ``pycuda`` are imported when the runner activates, never at module import. The
CUDA context is retained once and pushed/popped around every call, so ``infer`` works from any
thread (the classic "invalid device context" failure comes from worker threads without it). One
execution context serves all callers, so calls are serialised by a lock.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from edgeflow.errors import BackendError
from edgeflow.runtime.bundle import TensorSpec
from edgeflow.runtime.runners import Runner
from edgeflow.runtime.trt_build import import_tensorrt, translate_error


def import_pycuda() -> Any:
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        raise BackendError("pycuda is not installed; on Jetson `pip install pycuda` (needs the CUDA "
                           "toolkit from JetPack), or use the onnxruntime backend") from exc
    cuda.init()
    return cuda


def deserializes(engine: bytes) -> bool:
    """Whether this machine's TensorRT accepts ``engine`` (there is no preflight API)."""
    trt = import_tensorrt()
    cuda = import_pycuda()
    ctx = cuda.Device(0).retain_primary_context()
    ctx.push()
    try:
        runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
        return runtime.deserialize_cuda_engine(engine) is not None
    except Exception:  # a foreign plan may raise instead of returning None
        return False
    finally:
        ctx.pop()


class TrtRunner(Runner):
    """A serialized TensorRT engine (bytes or a file) on GPU ``device``."""

    name = "tensorrt"

    def __init__(self, engine: bytes | str | Path, *, device: int = 0) -> None:
        super().__init__()
        self._engine_src = engine
        self.device = device
        self._lock = threading.Lock()
        self._buffers: dict[str, tuple[Any, int]] = {}
        self.max_batch: int | None = None

    def _activate(self) -> None:
        trt = import_tensorrt()
        cuda = import_pycuda()
        self._trt, self._cuda = trt, cuda
        data = self._engine_src
        if not isinstance(data, bytes):
            data = Path(data).read_bytes()
        self._ctx = cuda.Device(self.device).retain_primary_context()
        self._ctx.push()
        try:
            self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            self._engine = self._runtime.deserialize_cuda_engine(data)
            if self._engine is None:
                raise translate_error("engine plan file is not compatible with this version of "
                                      "TensorRT or this GPU (deserialize returned None)")
            self._context = self._engine.create_execution_context()
            self._stream = cuda.Stream()
            for i in range(self._engine.num_io_tensors):
                name = self._engine.get_tensor_name(i)
                shape = tuple(d if d >= 0 else None for d in self._engine.get_tensor_shape(name))
                dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name))).name
                spec = TensorSpec(name, shape, dtype)
                if self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                    self.inputs.append(spec)
                    if shape and shape[0] is None:
                        hi = self._engine.get_tensor_profile_shape(name, 0)[2]
                        self.max_batch = int(hi[0])
                else:
                    self.outputs.append(spec)
        finally:
            self._ctx.pop()

    def _device_buffer(self, name: str, nbytes: int) -> Any:
        buf, size = self._buffers.get(name, (None, 0))
        if size < nbytes:
            buf = self._cuda.mem_alloc(max(nbytes, 1))
            self._buffers[name] = (buf, nbytes)
        return buf

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cuda = self._cuda
        with self._lock:
            self._ctx.push()
            try:
                for name, arr in feed.items():
                    self._context.set_input_shape(name, arr.shape)
                    dev = self._device_buffer(name, arr.nbytes)
                    cuda.memcpy_htod_async(dev, arr, self._stream)
                    self._context.set_tensor_address(name, int(dev))
                results = {}
                for spec in self.outputs:
                    shape = tuple(self._context.get_tensor_shape(spec.name))
                    host = cuda.pagelocked_empty(shape, np.dtype(spec.dtype))
                    dev = self._device_buffer(spec.name, host.nbytes)
                    self._context.set_tensor_address(spec.name, int(dev))
                    results[spec.name] = (host, dev)
                if not self._context.execute_async_v3(self._stream.handle):
                    raise translate_error("execute_async_v3 returned False")
                for host, dev in results.values():
                    cuda.memcpy_dtoh_async(host, dev, self._stream)
                self._stream.synchronize()
                return {name: np.array(host) for name, (host, _) in results.items()}
            except BackendError:
                raise
            except Exception as exc:  # pycuda/TensorRT raise their own types
                raise translate_error(str(exc)) from exc
            finally:
                self._ctx.pop()

    def _deactivate(self) -> None:
        if getattr(self, "_ctx", None) is None:
            return
        self._ctx.push()
        try:
            for buf, _ in self._buffers.values():
                buf.free()
            self._buffers.clear()
            self._context = self._engine = self._runtime = None
        finally:
            self._ctx.pop()
            self._ctx.detach()
            self._ctx = None
