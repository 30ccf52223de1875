"""TrtRunner: a TensorRT engine behind the Runner interface (named-tensor API, TensorRT 8.5+/10).

``tensorrt`` and ``pycuda`` are imported when the runner activates, never at module import. The
device's primary CUDA context is retained once and pushed/popped around every call, so ``infer``
works from any thread (the classic "invalid device context" failure comes from worker threads
without it). One execution context serves all callers, so calls are serialised by a lock.

Buffers: each tensor gets one page-locked host buffer and one device buffer, allocated on first
use, grown when a larger batch comes, reused by every later call and freed in ``deactivate`` with
the context pushed (pycuda cannot free them from another context; allocating per call leaked
page-locked memory across threads). Inputs are copied into the page-locked buffers first, so the
host-to-device copies are really asynchronous. An engine whose profile fixes the batch (DLA) gets
smaller batches padded to that size and its outputs cut back.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from edgeflow.errors import BackendError
from edgeflow.runtime.bundle import TensorSpec
from edgeflow.runtime.runners import Runner
from edgeflow.runtime.trt_build import import_tensorrt, translate_error, trt_logger


def import_pycuda() -> Any:
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        raise BackendError("pycuda is not installed; on Jetson `pip install pycuda` (needs the CUDA "
                           "toolkit from JetPack), or use the onnxruntime backend") from exc
    cuda.init()
    return cuda


class _Buffer:
    """A page-locked host buffer and a device buffer of the same capacity (bytes)."""

    def __init__(self, cuda: Any, nbytes: int) -> None:
        self.nbytes = max(nbytes, 1)
        self.host = cuda.pagelocked_empty(self.nbytes, np.uint8)
        self.device = cuda.mem_alloc(self.nbytes)

    def view(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        count = int(np.prod(shape)) * dtype.itemsize
        return self.host[:count].view(dtype).reshape(shape)

    def free(self) -> None:
        self.device.free()
        base = getattr(self.host, "base", None)
        if hasattr(base, "free"):  # pycuda's HostAllocation: give the pinned pages back now
            base.free()


class TrtRunner(Runner):
    """A serialized TensorRT engine (bytes or a file) on GPU ``device``."""

    name = "tensorrt"

    def __init__(self, engine: bytes | str | Path, *, device: int = 0) -> None:
        super().__init__()
        self._engine_src = engine
        self.device = device
        self._lock = threading.Lock()
        self._buffers: dict[str, _Buffer] = {}
        self.max_batch: int | None = None
        self.static_batch: int | None = None  # DLA engines run one batch size only
        self._ctx = None

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
            logger = trt_logger(trt)
            with logger.capture() as errors:
                self._runtime = trt.Runtime(logger)
                self._engine = self._runtime.deserialize_cuda_engine(data)
            if self._engine is None:
                raise translate_error("; ".join(errors) or "deserialize_cuda_engine returned None "
                                      "and TensorRT logged no error", what="loading the engine")
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
                        lo, _, hi = self._engine.get_tensor_profile_shape(name, 0)
                        self.max_batch = int(hi[0])
                        if int(lo[0]) == int(hi[0]):
                            self.static_batch = int(hi[0])
                else:
                    self.outputs.append(spec)
        except BaseException:
            self._ctx.pop()
            self._release()
            raise
        self._ctx.pop()

    def _buffer(self, name: str, nbytes: int) -> _Buffer:
        buf = self._buffers.get(name)
        if buf is None or buf.nbytes < nbytes:
            if buf is not None:
                buf.free()
            buf = self._buffers[name] = _Buffer(self._cuda, nbytes)
        return buf

    def _padded(self, feed: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int | None]:
        """Batch inputs padded to the static batch; the real batch size (None: no padding)."""
        if self.static_batch is None:
            return feed, None
        dynamic = {s.name for s in self.inputs if s.shape and s.shape[0] is None}
        sizes = {len(feed[n]) for n in dynamic}
        n = sizes.pop() if len(sizes) == 1 else None
        if n is None or n == self.static_batch:
            return feed, None
        if n > self.static_batch:
            raise BackendError(f"this engine runs batches of exactly {self.static_batch} (DLA); got "
                               f"{n}: send at most {self.static_batch} images per call")
        out = dict(feed)
        for name in dynamic:
            pad = np.zeros((self.static_batch - n, *feed[name].shape[1:]), feed[name].dtype)
            out[name] = np.concatenate([feed[name], pad])
        return out, n

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cuda = self._cuda
        feed, real = self._padded(feed)
        with self._lock:
            self._ctx.push()
            try:
                for name, arr in feed.items():
                    if not self._context.set_input_shape(name, arr.shape):
                        raise translate_error(f"set_input_shape({name!r}, {list(arr.shape)}) was "
                                              "refused by the engine's optimisation profile "
                                              f"(max batch {self.max_batch})")
                    buf = self._buffer(name, arr.nbytes)
                    host = buf.view(arr.shape, arr.dtype)
                    np.copyto(host, arr)
                    cuda.memcpy_htod_async(buf.device, host, self._stream)
                    self._context.set_tensor_address(name, int(buf.device))
                results = {}
                for spec in self.outputs:
                    shape = tuple(self._context.get_tensor_shape(spec.name))
                    dtype = np.dtype(spec.dtype)
                    buf = self._buffer(spec.name, int(np.prod(shape)) * dtype.itemsize)
                    self._context.set_tensor_address(spec.name, int(buf.device))
                    results[spec.name] = (buf.view(shape, dtype), buf)
                if not self._context.execute_async_v3(self._stream.handle):
                    raise translate_error("execute_async_v3 returned False")
                for host, buf in results.values():
                    cuda.memcpy_dtoh_async(host, buf.device, self._stream)
                self._stream.synchronize()
                # copies: the page-locked buffers are overwritten by the next call
                out = {name: np.array(host) for name, (host, _) in results.items()}
            except BackendError:
                raise
            except Exception as exc:  # pycuda/TensorRT raise their own types
                raise translate_error(str(exc)) from exc
            finally:
                self._ctx.pop()
        if real is not None:
            out = {k: v[:real] if v.ndim and len(v) == self.static_batch else v
                   for k, v in out.items()}
        return out

    def _release(self) -> None:
        """Free the buffers with the context pushed, then let the context go."""
        if self._ctx is None:
            return
        self._ctx.push()
        try:
            for buf in self._buffers.values():
                buf.free()
            self._buffers.clear()
            self._context = self._engine = self._runtime = None
        finally:
            self._ctx.pop()
            self._ctx.detach()
            self._ctx = None

    def _deactivate(self) -> None:
        with self._lock:
            self._release()
