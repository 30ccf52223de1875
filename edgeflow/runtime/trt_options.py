"""What to ask TensorRT's builder for, decided without TensorRT: options, flags, profiles, errors.

Everything here is a pure function of the request and the device facts, so it is tested on any
machine: the builder flags a request gets (:func:`select_flags`, including the ones to *clear*),
the optimisation profile (:func:`profile_shapes`, static for DLA), the network-creation flags of a
TensorRT version (:func:`network_flags`) and the translation of TensorRT's error text into
actionable errors (:func:`translate_error`). :mod:`edgeflow.runtime.trt_build` applies them.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from edgeflow.errors import BackendError, ConfigError, unknown_name
from edgeflow.runtime.bundle import TensorSpec

if TYPE_CHECKING:
    from edgeflow.targets import Target

PRECISIONS = ("fp32", "fp16", "int8")
# TensorRT majors EdgeFlow builds for: 8.5/8.6 (JetPack 5.1 / 6.0: Xavier NX and Orin on JetPack 5)
# and 10.x (JetPack 6.1+, desktops). 9.x was a datacenter-only LLM release; 11 drops the precision
# flags and implicit calibration, which select_flags reports.
MIN_TRT_8 = (8, 5)


@dataclass(frozen=True)
class BuildOptions:
    """What to ask the TensorRT builder for. The lead maps ``edgeflow.targets.Target`` onto this.

    ``precisions``: the layer precisions allowed ("fp32" always; "fp16", "int8" add builder flags).
    ``sparse_weights``: use 2:4 sparse tensor cores where the GPU has them (SM >= 8.0).
    ``dla_core``: run on that DLA core with GPU fallback (FP16/INT8 only). ``workspace_bytes``:
    tactic memory limit (keep it small on 8 GB Jetsons). ``batch``: (min, opt, max) of the dynamic
    batch dimension; ``ways``: the same for the task encoder's number of classes. A DLA engine has
    one shape only: its batch is ``batch[1]`` (opt) and the runner pads smaller batches.
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

    @property
    def trt_major_minor(self) -> tuple[int, int]:
        return parse_version(self.trt_version)


def parse_version(version: str) -> tuple[int, int]:
    """(major, minor) of a TensorRT version string such as '10.3.0.30'."""
    m = re.match(r"^(\d+)\.(\d+)", version)
    if not m:
        raise ConfigError(f"TensorRT version {version!r} is not like '10.3.0'")
    return int(m[1]), int(m[2])


def check_version(version: str) -> None:
    """Refuse a TensorRT EdgeFlow does not build for, naming the supported ones."""
    major, minor = parse_version(version)
    if not ((major, minor) >= MIN_TRT_8 and major != 9):
        raise BackendError(f"TensorRT {version} is not supported: EdgeFlow builds engines with "
                           "TensorRT 8.5/8.6 (JetPack 5.1/6.0) and 10.x (JetPack 6.1+, desktops); "
                           "upgrade JetPack or use --backend onnxruntime")


def network_flags(version: str, explicit_batch_bit: int) -> int:
    """The ``create_network`` flags: explicit batch below TensorRT 10 (where 0 means the implicit
    batch mode the ONNX parser rejects); 0 from 10 on, where explicit batch is the only mode."""
    return 1 << explicit_batch_bit if parse_version(version)[0] < 10 else 0


@dataclass(frozen=True)
class FlagPlan:
    """The builder configuration decided for (options, device): flags to set and to clear, DLA,
    whether INT8 scales come from a calibrator, and why."""

    flags: tuple[str, ...]
    dla_core: int | None
    notes: tuple[str, ...] = field(default=())
    clear: tuple[str, ...] = field(default=())
    calibrate: bool = False


def select_flags(options: BuildOptions, device: DeviceInfo, *, has_qdq: bool = False,
                 has_calibrator: bool = False) -> FlagPlan:
    """Builder flags (names of ``trt.BuilderFlag``) for ``options`` on ``device``.

    INT8 needs Q/DQ nodes in the ONNX or a calibrator. SPARSE_WEIGHTS only where sparse tensor
    cores exist (SM >= 8.0: Ampere, Orin; not Xavier's 7.2). DLA needs FP16 or INT8, takes
    GPU_FALLBACK so unsupported layers still run, and is dropped (with a note) on a GPU without
    DLA cores. An FP32-only request clears TF32 (on by default in TensorRT, it would round the
    matmuls and convolutions to a 10-bit mantissa). TensorRT >= 11 has no FP16/INT8 flags:
    precision must come from the ONNX itself.
    """
    flags: list[str] = []
    notes: list[str] = []
    major = parse_version(device.trt_version)[0]
    lowp = [p for p in options.precisions if p != "fp32"]
    calibrate = "int8" in lowp and not has_qdq
    if calibrate and not has_calibrator:
        raise ConfigError("INT8 needs a Q/DQ backbone (the bundle's int8 precision, made by "
                          "calibration) or a calibrator; build fp16 instead or calibrate first")
    if major >= 11:
        if lowp:
            notes.append(f"TensorRT {device.trt_version} takes precision from the ONNX (no FP16/INT8 "
                         "flags); an fp16/int8 engine needs an fp16 or Q/DQ graph")
        if calibrate:
            raise ConfigError(f"TensorRT {device.trt_version} has no implicit INT8 calibration; "
                              "use the bundle's TensorRT Q/DQ graph (edgeflow calibrate)")
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
        else:
            notes.append(f"DLA needs one input shape: the engine's batch is fixed at "
                         f"{options.batch[1]} (smaller batches are padded)")
            if options.gpu_fallback:
                flags.append("GPU_FALLBACK")
            else:
                notes.append("DLA without GPU_FALLBACK: layers DLA cannot run make the build fail")
    clear = ("TF32",) if not lowp else ()
    return FlagPlan(tuple(flags), dla, tuple(notes), clear, calibrate)


def profile_shapes(inputs: list[TensorSpec], options: BuildOptions, *, static: bool = False
                   ) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """(min, opt, max) shapes for each dynamic input: "N" dims take ``batch``, "W" ``ways``.

    ``static`` (DLA): min = opt = max = the opt shape, since DLA runs one shape only; a dynamic
    profile there sends every layer back to the GPU (or fails the build).
    """
    out = {}
    for spec in inputs:
        if all(isinstance(d, int) for d in spec.shape):
            continue
        shapes = []
        for k in ((1, 1, 1) if static else (0, 1, 2)):
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


_ERRORS = [
    (r"not compatible with this version|version tag does not match|magic tag does not match|"
     r"serialization assertion|plan file is not compatible|incompatible",
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
    (r"set_input_shape|input shape|profile",
     "the input shape is outside the engine's optimisation profile; rebuild with a larger "
     "--max-batch or send smaller batches"),
]


def translate_error(message: str, *, what: str = "TensorRT") -> BackendError:
    """An actionable :class:`BackendError` for TensorRT's (often cryptic) error text."""
    low = message.lower()
    for pattern, hint in _ERRORS:
        if re.search(pattern, low):
            return BackendError(f"{what} failed: {message.strip()} -> {hint}")
    return BackendError(f"{what} failed: {message.strip()}")
