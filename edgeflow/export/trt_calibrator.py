"""TensorRT INT8 entropy calibrator over a saved calibration sample, with a version-keyed cache.

TensorRT's implicit INT8 calibration calls four methods of an ``IInt8EntropyCalibrator2``:
``get_batch_size``, ``get_batch(names)`` (device pointers of the next batch, None when done),
``read_calibration_cache`` and ``write_calibration_cache``. Everything but the host->device copy is
plain Python here (:class:`CalibrationBatches`, :class:`CalibrationCache`,
:class:`EntropyCalibratorCore`) so it is tested without a GPU; :func:`make_entropy_calibrator`
subclasses ``trt.IInt8EntropyCalibrator2`` only when TensorRT and pycuda import.

The cache file starts with TensorRT's header ``TRT-<version code>-EntropyCalibration2`` (8.6.1 ->
8601, 10.3.0 -> 100300). TensorRT silently ignores a cache of another version; we refuse it
explicitly (and say why in ``refused``) and keep one file per version, so a JetPack upgrade
recalibrates instead of half-using stale scales. Implicit calibration is deprecated from TensorRT
10.1 and gone in 11: there the QDQ ONNX of :mod:`edgeflow.export.int8` is the INT8 path.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from edgeflow.errors import BackendError, ConfigError, DataError

log = logging.getLogger(__name__)
ALGORITHM = "EntropyCalibration2"


def trt_version_code(version: str) -> int:
    """TensorRT's NV_TENSORRT_VERSION: 8.6.1 -> 8601; from 10 on major*10000: 10.3.0 -> 100300."""
    m = re.match(r"^(\d+)\.(\d+)(?:\.(\d+))?", version)
    if not m:
        raise ConfigError(f"TensorRT version {version!r} is not like '10.3.0'")
    major, minor, patch = int(m[1]), int(m[2]), int(m[3] or 0)
    return major * (10000 if major >= 10 else 1000) + minor * 100 + patch


def cache_header(version: str) -> str:
    """First line of a calibration cache written by TensorRT ``version``."""
    return f"TRT-{trt_version_code(version)}-{ALGORITHM}"


class CalibrationBatches:
    """Full batches of ``sample`` in order, then None; ``reset`` starts over.

    The calibration profile of an explicit-batch network has one fixed shape, so a last partial
    batch is dropped rather than padded (padding would skew the activation histograms).
    """

    def __init__(self, sample: np.ndarray, *, batch_size: int) -> None:
        sample = np.asarray(sample)
        if sample.ndim != 4 or sample.dtype != np.float32:
            raise DataError(f"calibration sample must be float32 (N, C, H, W), got {sample.dtype} "
                            f"{sample.shape}")
        if batch_size < 1 or batch_size > len(sample):
            raise ConfigError(f"calibration batch size {batch_size} must be between 1 and the "
                              f"sample size {len(sample)}; lower it or draw more samples")
        self.sample, self.batch_size = sample, batch_size
        self._next = 0

    def __len__(self) -> int:
        return len(self.sample) // self.batch_size

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return (self.batch_size, *self.sample.shape[1:])

    @property
    def batch_nbytes(self) -> int:
        return int(np.prod(self.batch_shape)) * 4

    def next(self) -> np.ndarray | None:
        if self._next >= len(self):
            return None
        lo = self._next * self.batch_size
        self._next += 1
        return np.ascontiguousarray(self.sample[lo: lo + self.batch_size])

    def reset(self) -> None:
        self._next = 0


class CalibrationCache:
    """One cache file per (TensorRT version, key) under ``directory``; refuses other versions.

    ``key`` names the network and data the scales belong to (see :func:`cache_key`).
    """

    def __init__(self, directory: str | Path, *, trt_version: str, key: str) -> None:
        self.directory, self.trt_version, self.key = Path(directory), trt_version, key
        self.header = cache_header(trt_version)
        self.refused: str | None = None  # why the last read returned None although a file existed

    @property
    def path(self) -> Path:
        return self.directory / f"calib-trt{self.trt_version}-{self.key[:16]}.cache"

    def read(self) -> bytes | None:
        self.refused = None
        if not self.path.is_file():
            return None
        data = self.path.read_bytes()
        first = data.split(b"\n", 1)[0].decode("ascii", "replace").strip()
        if first != self.header:
            self.refused = (f"{self.path} has header {first!r} but TensorRT {self.trt_version} "
                            f"writes {self.header!r}; recalibrating")
            log.warning(self.refused)
            return None
        return data

    def write(self, data: bytes) -> Path:
        first = bytes(data).split(b"\n", 1)[0].decode("ascii", "replace").strip()
        if first != self.header:
            raise BackendError(f"TensorRT produced a cache with header {first!r}, expected "
                               f"{self.header!r}: the running TensorRT is not {self.trt_version}; "
                               "pass its version (trt.__version__)")
        from edgeflow.calibration import atomic_write

        atomic_write(self.path, bytes(data))
        return self.path


def cache_key(*, sample_digest: str, model_digest: str = "", batch_size: int) -> str:
    """Hex key of (model, sample, batch size): scales are only valid for the same three."""
    return hashlib.sha256(f"{model_digest}|{sample_digest}|{batch_size}".encode()).hexdigest()


class EntropyCalibratorCore:
    """What the TensorRT calibrator does, minus the device copy (the subclass adds that)."""

    def __init__(self, sample: np.ndarray, *, input_name: str, batch_size: int,
                 cache_dir: str | Path, trt_version: str, model_digest: str = "",
                 extra_inputs: dict[str, np.ndarray] | None = None) -> None:
        from edgeflow.calibration import sample_digest

        self.input_name = input_name
        # Fixed values of the other network inputs (a bundle backbone's theta -> theta0).
        self.extra_inputs = {k: np.ascontiguousarray(v, dtype=np.float32)
                             for k, v in (extra_inputs or {}).items()}
        self.batches = CalibrationBatches(sample, batch_size=batch_size)
        key = cache_key(sample_digest=sample_digest(self.batches.sample), model_digest=model_digest,
                        batch_size=batch_size)
        self.cache = CalibrationCache(cache_dir, trt_version=trt_version, key=key)

    def get_batch_size(self) -> int:
        return self.batches.batch_size

    def next_host_batch(self, names: list[str]) -> list[np.ndarray] | None:
        """Host arrays for ``names`` (TensorRT passes the network's input names, in its order): the
        next sample batch for the image input, the fixed value for each extra input; None at the end."""
        known = {self.input_name, *self.extra_inputs}
        if set(names) != known:
            raise BackendError(f"TensorRT asks calibration data for inputs {list(names)} but the "
                               f"calibrator feeds {sorted(known)}; pass the missing ones as "
                               "extra_inputs (e.g. theta=theta0)")
        batch = self.batches.next()
        if batch is None:
            return None
        return [batch if n == self.input_name else self.extra_inputs[n] for n in names]

    def read_calibration_cache(self) -> bytes | None:
        return self.cache.read()

    def write_calibration_cache(self, data: Any) -> None:
        self.cache.write(bytes(data))


def make_entropy_calibrator(sample: np.ndarray, *, input_name: str, batch_size: int,
                            cache_dir: str | Path, model_digest: str = "",
                            extra_inputs: dict[str, np.ndarray] | None = None,
                            device: int = 0) -> Any:
    """A ``trt.IInt8EntropyCalibrator2`` for ``config.int8_calibrator`` (needs tensorrt + pycuda).

    Example (on the device)::

        calib = make_entropy_calibrator(load_sample("calib.npy"), input_name="images",
                                        batch_size=16, cache_dir="calibration/cache")
        config.set_flag(trt.BuilderFlag.INT8); config.int8_calibrator = calib
        config.set_calibration_profile(profile)  # dynamic batch: a profile whose shapes are the
                                                 # calibration batch (batch_size, C, H, W)
    """
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendError("TensorRT is not installed; the TensorRT calibrator runs on the device "
                           "(pip install 'edgeflow[trt]' on a JetPack image). Use the QDQ ONNX from "
                           "`edgeflow calibrate` elsewhere") from exc
    # The device's primary context, the one TensorRT's builder and TrtRunner use: a second context
    # (pycuda.autoinit's) would hold the calibration buffers where the builder cannot see them.
    from edgeflow.runtime.trt_runner import import_pycuda

    cuda = import_pycuda()
    ctx = cuda.Device(device).retain_primary_context()

    core = EntropyCalibratorCore(sample, input_name=input_name, batch_size=batch_size,
                                 cache_dir=cache_dir, trt_version=trt.__version__,
                                 model_digest=model_digest, extra_inputs=extra_inputs)

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.core = core
            # one device buffer per input, reused for every batch
            ctx.push()
            try:
                self.device = {core.input_name: cuda.mem_alloc(core.batches.batch_nbytes),
                               **{n: cuda.mem_alloc(v.nbytes) for n, v in core.extra_inputs.items()}}
            finally:
                ctx.pop()

        def get_batch_size(self) -> int:
            return core.get_batch_size()

        def get_batch(self, names: list[str]) -> list[int] | None:
            arrays = core.next_host_batch(names)
            if arrays is None:
                return None
            ctx.push()
            try:
                for name, host in zip(names, arrays, strict=True):
                    cuda.memcpy_htod(self.device[name], host)
            finally:
                ctx.pop()
            return [int(self.device[name]) for name in names]

        def read_calibration_cache(self) -> bytes | None:
            return core.read_calibration_cache()

        def write_calibration_cache(self, cache: Any) -> None:
            core.write_calibration_cache(cache)

        def free(self) -> None:
            """Give the device buffers back (with the context they were made in)."""
            ctx.push()
            try:
                for buf in self.device.values():
                    buf.free()
                self.device = {}
            finally:
                ctx.pop()

    return EntropyCalibrator()
