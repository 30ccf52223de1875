"""Compile-time checks of a deployment request against a :class:`~edgeflow.targets.Target`.

Each check is a pure function returning a :class:`Check` (name, ok, message); the message says what
the device offers and, on failure, what to do. ``run_checks`` gathers them and
:func:`raise_on_failure` turns failures into one :class:`~edgeflow.errors.ConfigError`, so
``edgeflow compile`` fails before minutes of pruning and meta-training rather than on the device.

The memory plan takes plain numbers (bytes), so the compile pipeline can feed it from anywhere;
:func:`estimate_onnx_memory` derives the numbers of an ONNX graph from shape inference.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgeflow.errors import ConfigError
from edgeflow.targets import Target

MB = 1024 * 1024
MIN_CALIBRATION_SAMPLES = 32  # fewer images give activation ranges that do not generalise


@dataclass(frozen=True)
class Check:
    """One verdict: ``ok`` or not, and a message saying why and what to do."""

    name: str
    ok: bool
    message: str

    def __str__(self) -> str:
        return f"[{'ok' if self.ok else 'FAIL'}] {self.name}: {self.message}"


def check_sparsity(target: Target, *, sparse_2_4: bool) -> Check:
    """2:4 structured sparsity only pays on sparse tensor cores (Ampere+, Orin yes, Xavier no)."""
    if not sparse_2_4:
        return Check("sparsity", True, "no 2:4 sparsity requested")
    if target.sparse_2_4:
        return Check("sparsity", True, f"{target.name} has sparse tensor cores (SM {target.gpu_sm}); "
                     "the engine is built with SPARSE_WEIGHTS")
    return Check("sparsity", False,
                 f"2:4 sparsity requested but {target.name} has no sparse tensor cores (SM "
                 f"{target.gpu_sm or 'none'}), so it gives no speedup there; prune with channel "
                 "granularity instead (a smaller dense network is faster everywhere), or target an "
                 "Ampere/Orin device")


def check_dla(target: Target, *, use_dla: bool, precision: str = "fp16") -> Check:
    """DLA exists on Orin NX / AGX Orin / Xavier (not Orin Nano) and runs FP16/INT8 only."""
    if not use_dla:
        return Check("dla", True, "DLA not requested")
    if target.dla_cores == 0:
        return Check("dla", False, f"DLA requested but {target.name} has no DLA cores; drop the DLA "
                     "option (the GPU runs the whole network) or target jetson-orin-nx-16gb / "
                     "jetson-agx-orin-64gb")
    if precision == "fp32":
        return Check("dla", False, "DLA runs FP16 and INT8 only; choose precision fp16 or int8, or "
                     "drop the DLA option")
    return Check("dla", True, f"{target.name} has {target.dla_cores} DLA cores; DLA runs one input "
                 f"shape, so the engine's batch is fixed at batch_opt = {target.batch_opt} (smaller "
                 "batches are padded, larger ones split); unsupported layers fall back to the GPU "
                 "(GPU_FALLBACK)")


def check_trt_version(target: Target, *, trt_version: str | None) -> Check:
    """The TensorRT that will build the engine is one the target lists (engines do not port)."""
    if trt_version is None:
        return Check("tensorrt-version", True, "no TensorRT version given")
    if target.backend != "tensorrt":
        return Check("tensorrt-version", True, f"{target.name} runs ONNX Runtime; TensorRT unused")
    if target.supports_trt(trt_version):
        return Check("tensorrt-version", True, f"TensorRT {trt_version} is supported on {target.name}")
    jetpacks = list(target.jetpack)
    return Check("tensorrt-version", False,
                 f"TensorRT {trt_version} is not among {target.name}'s versions "
                 f"({', '.join(target.trt_versions)}; JetPack {', '.join(jetpacks) or '-'}); an engine "
                 "only runs on the TensorRT that built it, so build on the device or with one of those "
                 "versions, or add it to a custom profile")


def check_precision(target: Target, *, precision: str) -> Check:
    """The requested precision is one the device runs."""
    if target.supports(precision):
        return Check("precision", True, f"{target.name} runs {precision}")
    return Check("precision", False, f"{target.name} does not run {precision}; choose one of "
                 f"{', '.join(target.precisions)}")


def check_int8_calibration(*, precision: str, calibration: str | Path | np.ndarray | None,
                           quantized_graph: bool = False,
                           min_samples: int = MIN_CALIBRATION_SAMPLES) -> Check:
    """INT8 needs calibration data: a sample (array or .npy), an image folder, or a QDQ graph.

    ``quantized_graph``: the ONNX already carries Q/DQ nodes (explicit INT8), so no calibration runs.
    """
    if precision != "int8":
        return Check("int8-calibration", True, f"precision {precision} needs no calibration")
    if quantized_graph:
        return Check("int8-calibration", True, "the graph carries Q/DQ scales (explicit INT8)")
    fix = ("pass calibration images (--calibration-data DIR, a few hundred from the training "
           "domain) or run `edgeflow calibrate` first")
    if calibration is None:
        return Check("int8-calibration", False, f"INT8 requested without calibration data; {fix}")
    if isinstance(calibration, np.ndarray):
        n = len(calibration)
    else:
        path = Path(calibration)
        if not path.exists():
            return Check("int8-calibration", False, f"calibration data {path} does not exist; {fix}")
        if path.suffix != ".npy":
            return Check("int8-calibration", True, f"calibration images from {path}")
        n = int(np.load(path, mmap_mode="r", allow_pickle=False).shape[0])
    if n < min_samples:
        return Check("int8-calibration", False, f"only {n} calibration images; use at least "
                     f"{min_samples} (a few hundred is better): --samples {max(min_samples, 256)}")
    return Check("int8-calibration", True, f"{n} calibration images")


@dataclass(frozen=True)
class MemoryPlan:
    """What the model takes on the device at its largest batch, in bytes."""

    weight_bytes: int
    activation_bytes_per_image: int
    drift_bytes: int
    workspace_bytes: int
    batch: int

    @property
    def activation_bytes(self) -> int:
        return self.activation_bytes_per_image * self.batch

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.activation_bytes + self.drift_bytes + self.workspace_bytes

    def to_dict(self) -> dict:
        return {**asdict(self), "activation_bytes": self.activation_bytes,
                "total_bytes": self.total_bytes}

    def describe(self) -> str:
        return (f"weights {self.weight_bytes / MB:.1f} MB + activations {self.activation_bytes / MB:.1f} "
                f"MB (batch {self.batch}) + drift {self.drift_bytes / MB:.1f} MB + workspace "
                f"{self.workspace_bytes / MB:.0f} MB = {self.total_bytes / MB:.1f} MB")


def memory_plan(target: Target, *, weight_bytes: int, activation_bytes_per_image: int,
                drift_bytes: int = 0, batch: int | None = None) -> MemoryPlan:
    """The plan at ``batch`` (default: the target's ``batch_max``) with the target's workspace."""
    for name, v in (("weight_bytes", weight_bytes), ("activation_bytes_per_image",
                                                     activation_bytes_per_image),
                    ("drift_bytes", drift_bytes)):
        if v < 0:
            raise ConfigError(f"{name} must be >= 0, got {v}")
    return MemoryPlan(weight_bytes=int(weight_bytes),
                      activation_bytes_per_image=int(activation_bytes_per_image),
                      drift_bytes=int(drift_bytes), workspace_bytes=target.workspace_mb * MB,
                      batch=target.batch_max if batch is None else int(batch))


def check_memory(target: Target, plan: MemoryPlan) -> Check:
    """Weights + activations at the largest batch + drift network + workspace within the budget."""
    budget = target.memory_budget_mb * MB
    if plan.total_bytes <= budget:
        return Check("memory", True, f"{plan.describe()} fits {target.name}'s "
                     f"{target.memory_budget_mb} MB budget")
    over = (plan.total_bytes - budget) / MB
    fixes = []
    if plan.batch > 1 and plan.activation_bytes > 0:
        fits = int((budget - plan.total_bytes + plan.activation_bytes) // plan.activation_bytes_per_image)
        fixes.append(f"lower batch_max to {fits}" if fits >= 1 else "lower batch_max")
    fixes += ["prune harder (channel granularity shrinks weights and activations)",
              "use fp16/int8 precision", f"reduce workspace_mb ({target.workspace_mb})",
              "or raise memory_budget_mb in a custom profile"]
    return Check("memory", False, f"{plan.describe()} exceeds {target.name}'s "
                 f"{target.memory_budget_mb} MB budget by {over:.1f} MB; " + ", ".join(fixes))


def run_checks(target: Target, *, precision: str = "fp32", sparse_2_4: bool = False,
               use_dla: bool = False, calibration: str | Path | np.ndarray | None = None,
               quantized_graph: bool = False, plan: MemoryPlan | None = None,
               trt_version: str | None = None) -> list[Check]:
    """Every compile-time check for one request (memory only when a plan is given)."""
    checks = [check_precision(target, precision=precision),
              check_sparsity(target, sparse_2_4=sparse_2_4),
              check_dla(target, use_dla=use_dla, precision=precision),
              check_int8_calibration(precision=precision, calibration=calibration,
                                     quantized_graph=quantized_graph)]
    if trt_version is not None:
        checks.append(check_trt_version(target, trt_version=trt_version))
    if plan is not None:
        checks.append(check_memory(target, plan))
    return checks


def raise_on_failure(checks: Iterable[Check], *, target: Target | None = None) -> None:
    """Raise one ConfigError listing every failed check (each with its fix); else return."""
    failed = [c for c in checks if not c.ok]
    if failed:
        where = f" for target {target.name}" if target is not None else ""
        raise ConfigError(f"{len(failed)} compile-time check(s) failed{where}: "
                          + " | ".join(f"{c.name}: {c.message}" for c in failed))


# ------------------------------------------------------------------------------ ONNX estimates
@dataclass(frozen=True)
class OnnxMemory:
    """Weights and peak live activations of one ONNX graph at ``batch`` (bytes)."""

    weight_bytes: int
    peak_activation_bytes: int
    batch: int

    @property
    def activation_bytes_per_image(self) -> int:
        return -(-self.peak_activation_bytes // self.batch)  # ceil: never under-plan


def estimate_onnx_memory(model: str | Path, *, batch: int) -> OnnxMemory:
    """Weight bytes and peak activation bytes of an ONNX graph at ``batch``, from shape inference.

    Every symbolic first dimension of a graph input is set to ``batch``; shapes come from ONNX
    Runtime's symbolic shape inference (it resolves Pad/Reshape shapes computed in the graph), or
    ONNX's own with data propagation. Activations are simulated in node order: a tensor is live from
    the node that produces it to its last consumer (graph outputs to the end); the peak of the live
    total is an allocator-free bound (no in-place reuse, no kernel scratch space).
    """
    import onnx

    if batch < 1:
        raise ConfigError(f"batch must be >= 1, got {batch}")
    m = onnx.load(str(model), load_external_data=False)
    init_names = {i.name for i in m.graph.initializer}
    for inp in m.graph.input:
        if inp.name in init_names:
            continue
        dims = inp.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].ClearField("dim_param")
            dims[0].dim_value = batch
    shapes = _infer_shapes(m)

    weights = sum(_tensor_bytes(t.data_type, t.dims) for t in m.graph.initializer)
    constants = set()
    for node in m.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    weights += _tensor_bytes(a.t.data_type, a.t.dims)
            constants.update(node.output)

    last_use: dict[str, int] = {}
    for i, node in enumerate(m.graph.node):
        for name in node.input:
            last_use[name] = i
    outputs = {o.name for o in m.graph.output}
    live: dict[str, int] = {}
    unknown: list[str] = []

    def size(name: str) -> int:
        if name not in shapes:
            unknown.append(name)
            return 0
        return shapes[name]

    for inp in m.graph.input:
        if inp.name not in init_names:
            live[inp.name] = size(inp.name)
    peak = sum(live.values())
    for i, node in enumerate(m.graph.node):
        for name in node.output:
            if name and name not in constants:
                live[name] = size(name)
        peak = max(peak, sum(live.values()))
        for name in list(live):
            if last_use.get(name, -1) <= i and name not in outputs:
                del live[name]
    if unknown:
        raise ConfigError(f"{model}: shape inference left {len(unknown)} tensor shapes unknown "
                          f"({unknown[:5]}); simplify the graph (constant folding, opset >= 13) "
                          "or pass the byte counts to memory_plan directly")
    return OnnxMemory(weight_bytes=int(weights), peak_activation_bytes=int(peak), batch=batch)


def _tensor_bytes(data_type: int, dims: Iterable[int]) -> int:
    from onnx import helper

    return int(np.prod(list(dims), dtype=np.int64)) * np.dtype(
        helper.tensor_dtype_to_np_dtype(data_type)).itemsize


def _infer_shapes(m) -> dict[str, int]:
    """Tensor name -> bytes for every tensor whose shape and type inference resolved."""
    import onnx

    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        inferred = SymbolicShapeInference.infer_shapes(m, auto_merge=True)
    except Exception:  # ORT's inferencer rejects some graphs ONNX's own handles
        inferred = onnx.shape_inference.infer_shapes(m, data_prop=True)
    out: dict[str, int] = {}
    for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
        tt = v.type.tensor_type
        if not tt.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if all(d is not None and d >= 0 for d in dims):
            out[v.name] = _tensor_bytes(tt.elem_type, dims)
    return out
