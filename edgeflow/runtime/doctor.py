"""``edgeflow doctor``: what is installed and which backends really work (torch-free).

Each backend runs a tiny generated ONNX graph (1x1 conv -> ReLU -> global average pool, seeded
weights) and is compared with a numpy reference. Where TensorRT is installed: its import and
version (one EdgeFlow builds with), the CUDA device, FP32/FP16/INT8 engines for the tiny graph (INT8
from a Q/DQ copy in TensorRT's form) and an FP16 DLA engine where the device has DLA cores, each
run and compared with ONNX Runtime, and whether the engine cache folder is writable. Every check is
a row: name, ok (True, False, or None for "not applicable here"), detail.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

TOL = 1e-4


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def tiny_graph(path: Path, *, cin: int = 3, cout: int = 8, size: int = 16) -> tuple[np.ndarray, Any]:
    """Write the tiny test graph; return its 1x1 conv weight and a numpy reference function."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.normal(size=(cout, cin, 1, 1)).astype(np.float32)
    b = rng.normal(size=(cout,)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["y"])]
    graph = helper.make_graph(
        nodes, "edgeflow_doctor",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", cin, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", cout])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by the ONNX Runtime / TensorRT parsers of JetPack 5 and 6
    onnx.checker.check_model(model)
    onnx.save(model, str(path))

    def reference(x: np.ndarray) -> np.ndarray:
        c = np.einsum("oc,nchw->nohw", w[:, :, 0, 0], x) + b[None, :, None, None]
        return np.maximum(c, 0).mean(axis=(2, 3))

    return w, reference


def tiny_qdq_graph(path: Path, *, cin: int = 3, cout: int = 8, size: int = 16) -> None:
    """The tiny graph in TensorRT's INT8 Q/DQ form: symmetric int8 activations, per-channel
    weights through a float Q/DQ pair, float bias (see :mod:`edgeflow.export.int8_trt`)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.normal(size=(cout, cin, 1, 1)).astype(np.float32)
    b = rng.normal(size=(cout,)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"),
             numpy_helper.from_array(np.array(4.0 / 127, np.float32), "sx"),
             numpy_helper.from_array(np.array(0, np.int8), "zx"),
             numpy_helper.from_array((np.abs(w).reshape(cout, -1).max(1) / 127).astype(np.float32), "sw"),
             numpy_helper.from_array(np.zeros(cout, np.int8), "zw")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
             helper.make_node("QuantizeLinear", ["w", "sw", "zw"], ["wq"], axis=0),
             helper.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd", "b"], ["c"]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["y"])]
    graph = helper.make_graph(
        nodes, "edgeflow_doctor_int8",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", cin, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", cout])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _row(check: str, ok: bool | None, detail: str) -> dict[str, Any]:
    return {"check": check, "ok": ok, "detail": detail}


def _failed(check: str, exc: BaseException) -> dict[str, Any]:
    return _row(check, False, f"{type(exc).__name__}: {exc}")


def run_checks(*, engine_cache: str | Path | None = None) -> dict[str, Any]:
    """Environment facts and a list of {check, ok, detail} rows; ``ok`` overall.

    ``engine_cache``: the folder whose writability is checked (default: a bundle's ``engines/``
    is created on first use, so the current directory stands in for it).
    """
    from edgeflow.runtime.backends import tensorrt_available

    env = {"python": platform.python_version(), "machine": platform.machine(),
           "numpy": np.__version__, "onnxruntime": _version("onnxruntime"),
           "onnx": _version("onnx"), "tensorrt": _version("tensorrt"), "pycuda": _version("pycuda"),
           "torch_installed": importlib.util.find_spec("torch") is not None}
    rows: list[dict[str, Any]] = []
    x = np.random.default_rng(1).normal(size=(4, 3, 16, 16)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tiny.onnx"
        _, ref = tiny_graph(path)
        ort_out = None
        name = "onnxruntime: tiny graph vs numpy"
        try:
            import onnxruntime as ort

            from edgeflow.runtime.runners import OrtRunner

            env["onnxruntime_providers"] = ort.get_available_providers()
            with OrtRunner(path, threads=1) as r:
                ort_out = r.infer({"x": x})["y"]
            err = float(np.abs(ort_out - ref(x)).max())
            rows.append(_row(name, err <= TOL, f"max abs diff {err:.2e} (tol {TOL:g})"))
        except Exception as exc:  # report, do not crash: this is a diagnosis tool
            rows.append(_failed(name, exc))
        missing = tensorrt_available()
        if missing:
            rows.append(_row("tensorrt", None, f"absent: {missing}"))
        else:
            rows.extend(_trt_rows(path, x, ort_out, Path(tmp)))
            rows.append(_cache_row(Path(engine_cache) if engine_cache else Path.cwd() / "engines"))
    return {"environment": env, "checks": rows,
            "ok": all(r["ok"] is not False for r in rows)}


def _cache_row(folder: Path) -> dict[str, Any]:
    name = "engine cache: writable"
    existed = folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".doctor-"):
            pass
        if not existed:
            folder.rmdir()
        return _row(name, True, f"{folder}")
    except OSError as exc:
        return _row(name, False, f"{folder}: {exc}; pass --cache DIR (build) or "
                    "engine_cache= (Session) on a writable disk")


def _trt_rows(path: Path, x: np.ndarray, ort_out: np.ndarray | None, tmp: Path) -> list[dict]:
    from edgeflow.runtime.bundle import TensorSpec
    from edgeflow.runtime.trt_build import (
        BuildOptions,
        EngineCache,
        build_engine,
        device_info,
        engine_loader,
        import_tensorrt,
        select_flags,
    )
    from edgeflow.runtime.trt_options import check_version
    from edgeflow.runtime.trt_runner import TrtRunner

    try:
        trt = import_tensorrt()
        check_version(trt.__version__)
        rows = [_row("tensorrt: import and version", True, f"TensorRT {trt.__version__}")]
    except Exception as exc:
        return [_failed("tensorrt: import and version", exc)]
    try:
        dev = device_info()
        rows.append(_row("cuda: device", True, f"{dev.gpu_name}, SM {dev.sm}, "
                                               f"{dev.dla_cores} DLA cores"))
    except Exception as exc:
        return [*rows, _failed("cuda: device", exc)]
    qdq = tmp / "tiny.int8.onnx"
    tiny_qdq_graph(qdq)
    inputs = [TensorSpec("x", ("N", 3, 16, 16), "float32")]
    cases = [("fp32", path, None, 1e-3), ("fp16", path, None, 5e-2), ("int8", qdq, None, 5e-2)]
    cases.append(("fp16", path, 0, 5e-2) if dev.dla_cores else ("fp16", path, -1, 0.0))
    loader = engine_loader()
    for precision, onnx_path, dla, tol in cases:
        name = f"tensorrt {precision}{' on DLA' if dla is not None else ''}: build + run vs onnxruntime"
        if dla == -1:
            rows.append(_row(name, None, f"{dev.gpu_name} has no DLA cores"))
            continue
        try:
            with _ort(onnx_path) as r:
                want = r.infer({"x": x})["y"]  # the graph's own ONNX Runtime answer
            opts = BuildOptions.for_precision(precision, batch=(1, 4, 8), workspace_bytes=1 << 26,
                                              dla_core=dla)
            plan = select_flags(opts, dev, has_qdq=precision == "int8")
            engine, how = EngineCache(tmp / "engines").get(
                f"tiny-{precision}-{dla}", onnx_path, inputs, opts, dev, builder=build_engine,
                loader=loader, plan=plan)
            with TrtRunner(engine) as r:
                out = r.infer({"x": x})["y"]
            err = float(np.abs(out - want).max() / max(1e-6, float(np.abs(want).max())))
            rows.append(_row(name, err <= tol, f"{how}; flags {list(plan.flags)}; max relative "
                                               f"diff {err:.2e} (tol {tol:g})"))
        except Exception as exc:
            rows.append(_failed(name, exc))
    return rows


def _ort(path: Path):
    from edgeflow.runtime.runners import OrtRunner

    return OrtRunner(path, threads=1)
