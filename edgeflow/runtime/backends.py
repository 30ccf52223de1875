"""Backend choice for a Session: which runners serve a bundle's graphs, and why.

``"auto"`` means TensorRT when it is installed and an engine can be built or loaded, else ONNX
Runtime; the reason for falling back is returned (and the Session records it) rather than printed.
An explicit ``"tensorrt"`` that cannot work is an error. "None means default" is resolved here only:
precision defaults to fp32 on ONNX Runtime and fp16 on TensorRT.
"""

from __future__ import annotations

import functools
import importlib.util
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeflow.errors import BackendError, BundleError, ConfigError, EdgeflowError, unknown_name
from edgeflow.runtime.bundle import Bundle, sha256_file
from edgeflow.runtime.runners import OrtRunner, Runner

BACKENDS = ("auto", "onnxruntime", "tensorrt")
ALIASES = {"ort": "onnxruntime", "trt": "tensorrt"}
ORT_PRECISIONS = ("fp32", "int8")
CALIBRATION_SAMPLE = "calibration_sample.npy"


@dataclass
class Opened:
    backend: str
    precision: str
    runners: dict[str, Runner]
    max_batch: int | None = None
    fallback_reason: str | None = None
    engines: dict[str, str] = field(default_factory=dict)  # graph -> "cached"/"built"/...
    details: dict[str, dict] = field(default_factory=dict)  # graph -> what was built, where, how


def tensorrt_available() -> str | None:
    """None when tensorrt and pycuda can be imported, else the reason they cannot."""
    missing = [m for m in ("tensorrt", "pycuda") if importlib.util.find_spec(m) is None]
    if missing:
        return (f"{' and '.join(missing)} not installed (TensorRT comes with JetPack on Jetson; "
                "elsewhere `pip install tensorrt pycuda`)")
    return None


def _graphs(bundle: Bundle) -> list[str]:
    return ["backbone", "task_encoder", "drift"] if bundle.has_drift else ["backbone"]


def open_ort(bundle: Bundle, *, precision: str | None, threads: int | None) -> Opened:
    precision = precision or "fp32"
    if precision not in ORT_PRECISIONS:
        raise ConfigError(f"ONNX Runtime (CPU) runs the bundle at {', '.join(ORT_PRECISIONS)}; "
                          f"{precision!r} needs the tensorrt backend")
    runners: dict[str, Runner] = {}
    # the backbone cut at theta, for support passes; FP32 only (an INT8 graph cut in two fuses its
    # Q/DQ pairs differently from the whole INT8 graph that classifies the queries)
    split = [g for g in ("backbone_prefix", "backbone_suffix") if g in bundle.manifest["graphs"]]
    try:
        for g in [*_graphs(bundle), *(split if precision == "fp32" else [])]:
            path = bundle.graph_path(g, precision=precision) if g == "backbone" else bundle.graph_path(g)
            # The drift graphs are a few small matmuls per call: one thread is as fast and saves a
            # thread pool per session (memory on the device, contention with the backbone).
            runners[g] = OrtRunner(path, threads=threads if g.startswith("backbone") else 1,
                                   sha256=bundle.file_sha256(path.name)).activate()
    except BaseException:
        for r in runners.values():
            r.deactivate()
        raise
    return Opened("onnxruntime", precision, runners)


def trt_backbone(bundle: Bundle, precision: str) -> tuple[Path, bool]:
    """(ONNX to build the backbone engine from, whether INT8 scales need the calibrator).

    TensorRT cannot parse the ONNX Runtime INT8 graph (uint8, int32 biases from theta): INT8 takes
    the bundle's TensorRT Q/DQ graph (manifest ``tensorrt.int8``), else the FP32 graph calibrated
    on the device from the bundle's calibration sample. FP32/FP16 build from the FP32 graph.
    """
    if precision != "int8":
        return bundle.graph_path("backbone", precision="fp32"), False
    qdq = (bundle.manifest.get("tensorrt") or {}).get("int8")
    if qdq:
        return bundle.path / qdq, False
    if CALIBRATION_SAMPLE in bundle.manifest["files"]:
        return bundle.graph_path("backbone", precision="fp32"), True
    raise ConfigError(f"bundle {bundle.path} has no INT8 graph TensorRT can build (its int8 "
                      "backbone is ONNX Runtime's) and no calibration sample; run `edgeflow "
                      "calibrate BUNDLE --data ...` with this EdgeFlow, or use --precision fp16")


def trt_precisions(bundle: Bundle) -> list[str]:
    """The backbone precisions TensorRT can build from this bundle."""
    files = bundle.manifest["files"]
    int8 = (bundle.manifest.get("tensorrt") or {}).get("int8") or CALIBRATION_SAMPLE in files
    return ["fp32", "fp16", *(["int8"] if int8 else [])]


def _calibrator(bundle: Bundle, cache_dir: Path) -> Any:
    import numpy as np

    from edgeflow.export.trt_calibrator import make_entropy_calibrator

    sample = np.load(bundle.path / CALIBRATION_SAMPLE, allow_pickle=False)
    fp32 = bundle.manifest["files"][bundle.manifest["precisions"]["fp32"]]["sha256"]
    return make_entropy_calibrator(sample, input_name="images", batch_size=min(16, len(sample)),
                                   cache_dir=cache_dir, model_digest=fp32,
                                   extra_inputs={"theta": bundle.theta0()})


def open_trt(bundle: Bundle, *, precision: str | None, engine_cache: str | Path | None,
             build_options: Any = None, force: bool = False) -> Opened:
    """Runners on TensorRT engines built (or taken from the cache) for this machine."""
    reason = tensorrt_available()
    if reason:
        raise BackendError(f"TensorRT backend unavailable: {reason}")
    from edgeflow.runtime.trt_build import (
        BuildOptions,
        EngineCache,
        build_engine,
        device_info,
        engine_loader,
        profile_shapes,
        select_flags,
    )
    from edgeflow.runtime.trt_runner import TrtRunner

    precision = precision or "fp16"
    if precision not in ("fp32", "fp16", "int8"):
        raise unknown_name("precision", precision, ["fp32", "fp16", "int8"])
    options = build_options or BuildOptions.for_precision(precision)
    device = device_info()
    cache = EngineCache(engine_cache or bundle.path / "engines")
    loader = engine_loader()
    runners: dict[str, Runner] = {}
    engines: dict[str, str] = {}
    details: dict[str, dict] = {}
    calibrator = None
    try:
        for g in _graphs(bundle):
            if g == "backbone":
                path, calibrate = trt_backbone(bundle, precision)
                opts = options
            else:  # the drift graphs integrate theta over several steps: FP32 (no TF32) everywhere
                path, calibrate = bundle.graph_path(g), False
                opts = BuildOptions(precisions=("fp32",), workspace_bytes=options.workspace_bytes)
            plan = select_flags(opts, device, has_qdq=g == "backbone" and precision == "int8"
                                and not calibrate, has_calibrator=calibrate)
            builder = build_engine
            if plan.calibrate:
                calibrator = _calibrator(bundle, cache.root)
                builder = functools.partial(build_engine, calibrator=calibrator)
            inputs, _ = bundle.tensors(g)
            # the graph TensorRT builds from must still be the one the manifest hashed (the engine
            # key is taken from the file as it is now)
            if sha256_file(path) != bundle.file_sha256(path.name):
                raise BundleError(f"{path} changed after the bundle was verified (sha256 mismatch); "
                                  "copy the bundle again")
            t0 = time.perf_counter()
            engine, how = cache.get(g, path, inputs, opts, device, builder=builder,
                                    loader=loader, plan=plan, force=force)
            engines[g] = how
            details[g] = {
                "engine": str(engine), "onnx": path.name, "result": how,
                "seconds": round(time.perf_counter() - t0, 3), "flags": list(plan.flags),
                "cleared_flags": list(plan.clear), "calibrated": plan.calibrate,
                "device": "GPU" if plan.dla_core is None else f"DLA core {plan.dla_core}",
                "profile": {k: [list(v) for v in shapes] for k, shapes in profile_shapes(
                    inputs, opts, static=plan.dla_core is not None).items()},
                "notes": list(plan.notes)}
            runners[g] = TrtRunner(engine).activate()
    except BaseException:
        for r in runners.values():
            r.deactivate()
        raise
    finally:
        if calibrator is not None:
            calibrator.free()
    max_batch = getattr(runners["backbone"], "max_batch", None)
    return Opened("tensorrt", precision, runners, max_batch=max_batch, engines=engines,
                  details=details)


def open_runners(bundle: Bundle, *, backend: str = "auto", precision: str | None = None,
                 threads: int | None = None, engine_cache: str | Path | None = None,
                 build_options: Any = None) -> Opened:
    """Open every graph of ``bundle`` on ``backend`` (see the module docstring)."""
    backend = ALIASES.get(backend, backend)
    if backend not in BACKENDS:
        raise unknown_name("backend", backend, BACKENDS)
    if backend == "onnxruntime":
        return open_ort(bundle, precision=precision, threads=threads)
    if backend == "tensorrt":
        return open_trt(bundle, precision=precision, engine_cache=engine_cache,
                        build_options=build_options)
    reason = tensorrt_available()
    if reason is None:
        try:
            return open_trt(bundle, precision=precision, engine_cache=engine_cache,
                            build_options=build_options)
        except EdgeflowError as exc:
            reason = f"TensorRT failed, so ONNX Runtime runs the bundle: {exc}"
        except Exception as exc:  # pycuda/TensorRT raise their own types; auto must not die of them
            reason = (f"TensorRT failed ({type(exc).__name__}: {exc}), so ONNX Runtime runs the "
                      "bundle")
    else:
        reason = f"TensorRT backend unavailable: {reason}"
    ort_precision = precision if precision in ORT_PRECISIONS else None
    if precision is not None and ort_precision is None:
        reason += f"; {precision} does not run on ONNX Runtime (CPU), so fp32 is used"
    opened = open_ort(bundle, precision=ort_precision, threads=threads)
    opened.fallback_reason = reason
    return opened


def choose_for_target(bundle: Bundle, target: Any, backend: str, precision: str | None,
                      build_options: Any) -> tuple[str, str | None, Any]:
    """Backend, precision and TensorRT options from a target profile, where the caller left them.

    The fastest precision both the bundle carries for the backend and the device runs (TensorRT
    builds FP16 from the FP32 graph, and INT8 from the TensorRT Q/DQ graph or the calibration
    sample); a CPU target never tries TensorRT.
    """
    from edgeflow.targets import Target

    t = target if isinstance(target, Target) else Target.load(target)
    if backend == "auto" and t.backend == "onnxruntime":
        backend = "onnxruntime"
    trt = backend in ("auto", "tensorrt") and t.backend == "tensorrt"
    if precision is None:
        # per backend: what TensorRT can build from this bundle (its INT8 needs the TensorRT Q/DQ
        # graph or the calibration sample), else what ONNX Runtime runs
        usable = trt and (backend == "tensorrt" or tensorrt_available() is None)
        precision = t.pick_precision(trt_precisions(bundle) if usable
                                     else list(bundle.manifest["precisions"]))
    if build_options is None and trt:
        from edgeflow.runtime.trt_build import BuildOptions

        build_options = BuildOptions.from_target(t, precision=precision)
    return backend, precision, build_options
