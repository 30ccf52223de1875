"""TensorRT engine building from a bundle's ONNX, and the engine cache (TensorRT 10 API).

Everything that can be decided without a GPU is a pure function here and tested on any machine:
which builder flags a target gets (:func:`select_flags`), the optimisation profile
(:func:`profile_shapes`), the cache key (:func:`cache_key`), cache lookup/invalidation
(:class:`EngineCache`) and the translation of TensorRT's error text into actionable errors
(:func:`translate_error`). The code that touches ``tensorrt`` (:func:`build_engine`,
:func:`device_info`) is thin and imports it lazily.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeflow.errors import BackendError, ConfigError, unknown_name
from edgeflow.runtime.bundle import TensorSpec, sha256_file

PRECISIONS = ("fp32", "fp16", "int8")

if TYPE_CHECKING:
    from edgeflow.targets import Target


@dataclass(frozen=True)
class BuildOptions:
    """What to ask the TensorRT builder for. The lead maps ``edgeflow.targets.Target`` onto this.

    ``precisions``: the layer precisions allowed ("fp32" always; "fp16", "int8" add builder flags).
    ``sparse_weights``: use 2:4 sparse tensor cores where the GPU has them (SM >= 8.0).
    ``dla_core``: run on that DLA core with GPU fallback (FP16/INT8 only). ``workspace_bytes``:
    tactic memory limit (keep it small on 8 GB Jetsons). ``batch``: (min, opt, max) of the dynamic
    batch dimension; ``ways``: the same for the task encoder's number of classes.
    """

    precisions: tuple[str, ...] = ("fp32", "fp16")
    sparse_weights: bool = False
    dla_core: int | None = None
    gpu_fallback: bool = True
    workspace_bytes: int | None = 1 << 30
    batch: tuple[int, int, int] = (1, 32, 128)
    ways: tuple[int, int, int] = (1, 5, 64)

    def __post_init__(self) -> None:
        for p in self.precisions:
            if p not in PRECISIONS:
                raise unknown_name("precision", p, PRECISIONS)
        for name, (lo, opt, hi) in (("batch", self.batch), ("ways", self.ways)):
            if not 1 <= lo <= opt <= hi:
                raise ConfigError(f"{name} range must satisfy 1 <= min <= opt <= max, got "
                                  f"{(lo, opt, hi)}")
        if self.dla_core is not None and self.dla_core < 0:
            raise ConfigError(f"dla_core must be >= 0, got {self.dla_core}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def for_precision(cls, precision: str, **kw: Any) -> BuildOptions:
        """Options for one backbone precision: fp32 -> fp32 only; fp16; int8 (+fp16 fallback)."""
        table = {"fp32": ("fp32",), "fp16": ("fp32", "fp16"), "int8": ("fp32", "fp16", "int8")}
        if precision not in table:
            raise unknown_name("precision", precision, list(table))
        return cls(precisions=table[precision], **kw)

    @classmethod
    def from_target(cls, target: Target, *, precision: str = "fp16",
                    dla_core: int | None = None) -> BuildOptions:
        """Options from a device profile: its workspace, batch range and 2:4 support.

        DLA is a per-build choice (``dla_core``), checked against the profile's DLA cores.
        """
        if dla_core is not None and not 0 <= dla_core < target.dla_cores:
            raise ConfigError(f"target {target.name} has {target.dla_cores} DLA cores; "
                              f"--dla-core {dla_core} does not exist there")
        return cls(precisions=cls.for_precision(precision).precisions,
                   sparse_weights=target.sparse_2_4, dla_core=dla_core,
                   workspace_bytes=target.workspace_mb << 20 if target.workspace_mb else
                   cls.for_precision(precision).workspace_bytes,
                   batch=(target.batch_min, target.batch_opt, target.batch_max))


@dataclass(frozen=True)
class DeviceInfo:
    """The build machine as far as engines care: TensorRT version, GPU name, SM, DLA cores."""

    trt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]
    dla_cores: int = 0

    @property
    def sm(self) -> str:
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"


@dataclass(frozen=True)
class FlagPlan:
    """The builder configuration decided for (options, device): flags, DLA, and why."""

    flags: tuple[str, ...]
    dla_core: int | None
    notes: tuple[str, ...] = field(default=())


def select_flags(options: BuildOptions, device: DeviceInfo, *, has_qdq: bool = False,
                 has_calibrator: bool = False) -> FlagPlan:
    """Builder flags (names of ``trt.BuilderFlag``) for ``options`` on ``device``.

    INT8 needs Q/DQ nodes in the ONNX or a calibrator. SPARSE_WEIGHTS only where sparse tensor
    cores exist (SM >= 8.0: Ampere, Orin; not Xavier's 7.2). DLA needs FP16 or INT8, takes
    GPU_FALLBACK so unsupported layers still run, and is dropped (with a note) on a GPU without
    DLA cores. TensorRT >= 11 has no FP16/INT8 flags: precision must come from the ONNX itself.
    """
    flags: list[str] = []
    notes: list[str] = []
    major = int(device.trt_version.split(".")[0])
    lowp = [p for p in options.precisions if p != "fp32"]
    if "int8" in lowp and not (has_qdq or has_calibrator):
        raise ConfigError("INT8 needs a Q/DQ backbone (the bundle's int8 precision, made by "
                          "calibration) or a calibrator; build fp16 instead or calibrate first")
    if major >= 11:
        if lowp:
            notes.append(f"TensorRT {device.trt_version} takes precision from the ONNX (no FP16/INT8 "
                         "flags); an fp16/int8 engine needs an fp16 or Q/DQ graph")
    else:
        if "fp16" in lowp:
            flags.append("FP16")
        if "int8" in lowp:
            flags.append("INT8")
    if options.sparse_weights:
        if device.compute_capability >= (8, 0):
            flags.append("SPARSE_WEIGHTS")
        else:
            notes.append(f"sparse weights requested but SM {device.sm} ({device.gpu_name}) has no "
                         "sparse tensor cores; SPARSE_WEIGHTS not set")
    dla = options.dla_core
    if dla is not None:
        if device.dla_cores <= dla:
            notes.append(f"DLA core {dla} requested but {device.gpu_name} has {device.dla_cores} "
                         "DLA cores; building for the GPU")
            dla = None
        elif not lowp:
            raise ConfigError("DLA runs FP16/INT8 only; add fp16 to the precisions to use DLA")
        elif options.gpu_fallback:
            flags.append("GPU_FALLBACK")
        else:
            notes.append("DLA without GPU_FALLBACK: layers DLA cannot run make the build fail")
    return FlagPlan(tuple(flags), dla, tuple(notes))


def profile_shapes(inputs: list[TensorSpec], options: BuildOptions
                   ) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """(min, opt, max) shapes for each dynamic input: "N" dims take ``batch``, "W" ``ways``."""
    out = {}
    for spec in inputs:
        if all(isinstance(d, int) for d in spec.shape):
            continue
        shapes = []
        for k in range(3):
            dims = []
            for d in spec.shape:
                if isinstance(d, int):
                    dims.append(d)
                elif d == "W":
                    dims.append(options.ways[k])
                else:
                    dims.append(options.batch[k])
            shapes.append(tuple(dims))
        out[spec.name] = (shapes[0], shapes[1], shapes[2])
    return out


def cache_key(device: DeviceInfo, onnx_sha256: str, options: BuildOptions) -> str:
    """sha256 over (TensorRT version, GPU name, SM, ONNX sha256, build options as JSON)."""
    payload = json.dumps({"trt": device.trt_version, "gpu": device.gpu_name,
                          "sm": list(device.compute_capability), "onnx": onnx_sha256,
                          "options": options.to_dict()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


_ERRORS = [
    (r"not compatible with this version|version tag does not match|magic tag does not match|"
     r"serialization assertion|plan file is not compatible",
     "the engine was built by another TensorRT version or GPU; delete it or run `edgeflow build "
     "BUNDLE --force` to rebuild it here"),
    (r"out of memory|requested amount of gpu memory|allocation failed|cudaErrorMemoryAllocation",
     "the GPU ran out of memory; lower the build workspace (--workspace-mb), the max batch, or "
     "close other GPU processes (8 GB Jetsons share memory with the CPU)"),
    (r"invalid device context|context is destroyed|context.*not current",
     "the CUDA context is not current in this thread; use the Runner from the thread that "
     "activated it or let TrtRunner push its context (it does so in infer)"),
    (r"dla", "a layer cannot run on the DLA; enable GPU fallback or build for the GPU"),
    (r"int8.*calibrat|calibrat.*int8|no scaling factors",
     "INT8 needs calibration: use the bundle's Q/DQ int8 backbone or a calibrator"),
    (r"parse|unsupported onnx|onnx.*opset|assertion failed: .*onnx",
     "TensorRT's ONNX parser rejected the graph; check the opset and ops, or use ONNX Runtime"),
]


def translate_error(message: str, *, what: str = "TensorRT") -> BackendError:
    """An actionable :class:`BackendError` for TensorRT's (often cryptic) error text."""
    low = message.lower()
    for pattern, hint in _ERRORS:
        if re.search(pattern, low):
            return BackendError(f"{what} failed: {message.strip()} -> {hint}")
    return BackendError(f"{what} failed: {message.strip()}")


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


Builder = Callable[..., tuple[bytes, bytes]]  # (onnx, inputs, options, plan, timing) -> (engine, timing)
Loader = Callable[[bytes], bool]  # engine bytes -> usable on this device?


class EngineCache:
    """Engines under ``root`` named by graph and cache key, each with a JSON sidecar.

    ``get`` returns the cached engine when its key matches and ``loader`` accepts it; a stale
    engine (other ONNX, options, TensorRT or GPU) or a foreign/corrupt one is rebuilt with
    ``builder``. Timing caches are kept beside the engines, one per (TensorRT version, GPU).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def engine_path(self, graph: str, key: str) -> Path:
        return self.root / f"{graph}-{key[:24]}.engine"

    def timing_cache_path(self, device: DeviceInfo) -> Path:
        tag = hashlib.sha256(f"{device.trt_version}|{device.gpu_name}|{device.sm}".encode())
        return self.root / f"timing-{tag.hexdigest()[:16]}.cache"

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
            meta = json.loads(side.read_text()) if side.is_file() else {}
            data = path.read_bytes()
            if meta.get("key") != key:
                why = "rebuilt: sidecar missing or for another key"
            elif meta.get("engine_sha256") != hashlib.sha256(data).hexdigest():
                why = "rebuilt: engine file changed or truncated"
            elif not loader(data):
                why = "rebuilt: TensorRT could not deserialize the cached engine (foreign engine)"
            else:
                return path, "cached"
        elif force and path.is_file():
            why = "rebuilt: forced"
        for stale in self.root.glob(f"{graph}-*.engine"):  # other keys of this graph are stale
            if stale != path:
                stale.unlink(missing_ok=True)
                stale.with_suffix(".json").unlink(missing_ok=True)
        tc_path = self.timing_cache_path(device)
        timing = tc_path.read_bytes() if tc_path.is_file() else b""
        data, new_timing = builder(onnx_path, inputs, options, plan, timing)
        if not loader(data):
            raise BackendError(f"TensorRT built an engine for {graph} that it cannot load")
        _atomic_write(path, data)
        _atomic_write(side, json.dumps({
            "key": key, "graph": graph, "onnx_sha256": onnx_sha, "trt_version": device.trt_version,
            "gpu": device.gpu_name, "sm": device.sm, "options": options.to_dict(),
            "flags": list(plan.flags), "dla_core": plan.dla_core, "notes": list(plan.notes),
            "engine_sha256": hashlib.sha256(data).hexdigest()}, indent=2).encode())
        if new_timing:
            _atomic_write(tc_path, new_timing)
        return path, why


# ---- the part that needs TensorRT (thin; exercised by `edgeflow doctor` on a device) ----------

def import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendError("TensorRT is not installed: on Jetson it comes with JetPack "
                           "(python3-libnvinfer); elsewhere `pip install tensorrt pycuda`") from exc
    return trt


def device_info(device: int = 0) -> DeviceInfo:
    """TensorRT version, GPU name, SM and DLA cores of this machine (needs tensorrt + pycuda)."""
    trt = import_tensorrt()
    from edgeflow.runtime.trt_runner import import_pycuda

    cuda = import_pycuda()
    dev = cuda.Device(device)
    builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
    return DeviceInfo(trt_version=trt.__version__, gpu_name=dev.name(),
                      compute_capability=tuple(dev.compute_capability()),
                      dla_cores=int(getattr(builder, "num_DLA_cores", 0)))


def build_engine(onnx_path: Path, inputs: list[TensorSpec], options: BuildOptions, plan: FlagPlan,
                 timing_cache: bytes) -> tuple[bytes, bytes]:
    """(serialized engine, updated timing cache) for ``onnx_path`` with TensorRT 10's builder."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise translate_error(f"parse {onnx_path.name}: {errors}", what="TensorRT's ONNX parser")
    config = builder.create_builder_config()
    if options.workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
    for flag in plan.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if plan.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = plan.dla_core
    shapes = profile_shapes(inputs, options)
    if shapes:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in shapes.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache)
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise translate_error(f"building {onnx_path.name} returned no engine (see the TensorRT log "
                              "above)")
    return bytes(serialized), bytes(cache.serialize())
