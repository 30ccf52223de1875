"""The part of engine building that touches TensorRT (8.5+/10.x Python API), kept thin.

The decisions are pure functions in :mod:`edgeflow.runtime.trt_options` (flags, profiles, network
flags, error text) and the cache is :mod:`edgeflow.runtime.trt_cache`; this module applies them
with ``tensorrt``, imported lazily. It is exercised against the real bindings' API surface by
``tests/runtime/test_trt_api.py`` and on a device by ``edgeflow doctor``.

TensorRT's log goes to Python logging (logger ``edgeflow.tensorrt``, i.e. stderr under the CLI,
never stdout, so ``--json`` output stays clean), and the errors it logs during a build or a
deserialisation are put into the exception raised for it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgeflow.errors import BackendError
from edgeflow.runtime.bundle import TensorSpec
from edgeflow.runtime.trt_cache import EngineCache, cache_key
from edgeflow.runtime.trt_options import (
    PRECISIONS,
    BuildOptions,
    DeviceInfo,
    FlagPlan,
    check_version,
    network_flags,
    profile_shapes,
    select_flags,
    translate_error,
)

log = logging.getLogger("edgeflow.tensorrt")

__all__ = ["PRECISIONS", "BuildOptions", "DeviceInfo", "EngineCache", "FlagPlan", "build_engine",
           "cache_key", "device_info", "engine_loader", "import_tensorrt", "profile_shapes",
           "select_flags", "translate_error", "trt_logger"]


def import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendError("TensorRT is not installed: on Jetson it comes with JetPack "
                           "(python3-libnvinfer); elsewhere `pip install tensorrt pycuda`") from exc
    return trt


_LOGGER: Any = None
_LOGGER_LOCK = threading.Lock()


def trt_logger(trt: Any) -> Any:
    """The process's one TensorRT logger (TensorRT keeps the first logger it is given for every
    builder and runtime), forwarding to Python logging; ``capture()`` collects the errors."""
    global _LOGGER
    with _LOGGER_LOCK:
        if _LOGGER is None or _LOGGER.trt is not trt:
            _LOGGER = _make_logger(trt)
        return _LOGGER


def _make_logger(trt: Any) -> Any:
    sev = trt.ILogger.Severity
    levels = {sev.INTERNAL_ERROR: logging.CRITICAL, sev.ERROR: logging.ERROR,
              sev.WARNING: logging.WARNING, sev.INFO: logging.INFO, sev.VERBOSE: logging.DEBUG}
    errors = (sev.INTERNAL_ERROR, sev.ERROR)

    class PythonLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.trt = trt
            self._captures = threading.local()

        def log(self, severity: Any, msg: str) -> None:
            log.log(levels.get(severity, logging.INFO), "TensorRT: %s", msg)
            if severity in errors:
                for sink in getattr(self._captures, "stack", []):
                    sink.append(str(msg))

        @contextlib.contextmanager
        def capture(self) -> Iterator[list[str]]:
            """Errors TensorRT logs from this thread inside the block."""
            stack = self._captures.__dict__.setdefault("stack", [])
            sink: list[str] = []
            stack.append(sink)
            try:
                yield sink
            finally:
                stack.remove(sink)

    return PythonLogger()


def device_info(device: int = 0) -> DeviceInfo:
    """TensorRT version, GPU name, SM and DLA cores of this machine (needs tensorrt + pycuda)."""
    trt = import_tensorrt()
    check_version(trt.__version__)
    from edgeflow.runtime.trt_runner import import_pycuda

    cuda = import_pycuda()
    dev = cuda.Device(device)
    builder = trt.Builder(trt_logger(trt))
    return DeviceInfo(trt_version=trt.__version__, gpu_name=dev.name(),
                      compute_capability=tuple(dev.compute_capability()),
                      dla_cores=int(builder.num_DLA_cores))


def _joined(errors: list[str], fallback: str) -> str:
    return "; ".join(errors) if errors else fallback


def build_engine(onnx_path: Path, inputs: list[TensorSpec], options: BuildOptions, plan: FlagPlan,
                 timing_cache: bytes, *, calibrator: Any = None) -> tuple[bytes, bytes]:
    """(serialized engine, updated timing cache) for ``onnx_path``.

    ``calibrator`` (an ``IInt8EntropyCalibrator2``, see :mod:`edgeflow.export.trt_calibrator`) is
    required when ``plan.calibrate`` (INT8 scales measured from the FP32 graph, TensorRT < 11).
    """
    trt = import_tensorrt()
    logger = trt_logger(trt)
    onnx_path = Path(onnx_path)
    with logger.capture() as errors:
        builder = trt.Builder(logger)
        network = builder.create_network(network_flags(
            trt.__version__, int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(onnx_path.read_bytes()):
            found = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise translate_error(f"parse {onnx_path.name}: {_joined(found + errors, 'no detail')}",
                                  what="TensorRT's ONNX parser")
        config = builder.create_builder_config()
        if options.workspace_bytes:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
        for flag in plan.flags:
            config.set_flag(getattr(trt.BuilderFlag, flag))
        for flag in plan.clear:
            config.clear_flag(getattr(trt.BuilderFlag, flag))
        if plan.dla_core is not None:
            config.default_device_type = trt.DeviceType.DLA
            config.DLA_core = plan.dla_core
        shapes = profile_shapes(inputs, options, static=plan.dla_core is not None)
        if shapes:
            profile = builder.create_optimization_profile()
            for name, (lo, opt, hi) in shapes.items():
                profile.set_shape(name, lo, opt, hi)
            config.add_optimization_profile(profile)
        if plan.calibrate:
            _attach_calibrator(trt, builder, config, inputs, calibrator)
        cache = config.create_timing_cache(timing_cache)
        if not config.set_timing_cache(cache, ignore_mismatch=False):
            # a timing cache of another device or version: start a fresh one rather than fail
            log.warning("TensorRT refused the timing cache; building with an empty one")
            cache = config.create_timing_cache(b"")
            config.set_timing_cache(cache, ignore_mismatch=False)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise translate_error(f"building {onnx_path.name} returned no engine: "
                                  f"{_joined(errors, 'TensorRT logged no error')}")
    return bytes(serialized), bytes(cache.serialize())


def _attach_calibrator(trt: Any, builder: Any, config: Any, inputs: list[TensorSpec],
                       calibrator: Any) -> None:
    """Implicit INT8 calibration: the calibrator plus a profile fixed at its batch shape."""
    if calibrator is None:
        raise BackendError("INT8 from the FP32 graph needs a calibrator (the bundle's "
                           "calibration_sample.npy); run `edgeflow calibrate BUNDLE` first")
    batch = int(calibrator.get_batch_size())
    profile = builder.create_optimization_profile()
    for spec in inputs:
        shape = tuple(batch if not isinstance(d, int) else d for d in spec.shape)
        profile.set_shape(spec.name, shape, shape, shape)
    config.int8_calibrator = calibrator
    if not config.set_calibration_profile(profile):
        raise BackendError("TensorRT refused the INT8 calibration profile")


def engine_loader(device: int = 0):
    """A cache loader: engine bytes -> None when TensorRT deserialises them here, else why not.

    A plan of another TensorRT version or GPU ("foreign") and any other failure (out of memory, a
    missing plugin) are told apart by TensorRT's own error text.
    """
    def load(engine: bytes) -> str | None:
        trt = import_tensorrt()
        from edgeflow.runtime.trt_runner import import_pycuda

        cuda = import_pycuda()
        ctx = cuda.Device(device).retain_primary_context()
        ctx.push()
        logger = trt_logger(trt)
        try:
            with logger.capture() as errors:
                try:
                    ok = trt.Runtime(logger).deserialize_cuda_engine(engine) is not None
                except Exception as exc:  # the bindings raise on some malformed plans
                    errors.append(f"{type(exc).__name__}: {exc}")
                    ok = False
            return None if ok else str(translate_error(_joined(
                errors, "deserialize_cuda_engine returned None"), what="deserialize"))
        finally:
            ctx.pop()

    return load
