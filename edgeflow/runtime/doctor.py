"""``edgeflow doctor``: what is installed and which backends really work (torch-free).

Each backend runs a tiny generated ONNX graph (1x1 conv -> ReLU -> global average pool, seeded
weights) and is compared with a numpy reference; where TensorRT is installed an engine is built for
the same graph and compared with ONNX Runtime. Every check is a row: name, ok, detail.
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


def run_checks() -> dict[str, Any]:
    """Environment facts and a list of {check, ok, detail} rows."""
    from edgeflow.runtime.backends import tensorrt_available

    env = {"python": platform.python_version(), "machine": platform.machine(),
           "numpy": np.__version__, "onnxruntime": _version("onnxruntime"),
           "onnx": _version("onnx"), "tensorrt": _version("tensorrt"), "pycuda": _version("pycuda"),
           "torch_installed": importlib.util.find_spec("torch") is not None}
    rows: list[dict[str, Any]] = []
    x = np.random.default_rng(1).normal(size=(4, 3, 16, 16)).astype(np.float32)
    ort_out = None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tiny.onnx"
        _, ref = tiny_graph(path)
        try:
            import onnxruntime as ort

            from edgeflow.runtime.runners import OrtRunner

            env["onnxruntime_providers"] = ort.get_available_providers()
            with OrtRunner(path, threads=1) as r:
                ort_out = r.infer({"x": x})["y"]
            err = float(np.abs(ort_out - ref(x)).max())
            rows.append({"check": "onnxruntime: tiny graph vs numpy", "ok": err <= TOL,
                         "detail": f"max abs diff {err:.2e} (tol {TOL:g})"})
        except Exception as exc:  # report, do not crash: this is a diagnosis tool
            rows.append({"check": "onnxruntime: tiny graph vs numpy", "ok": False,
                         "detail": f"{type(exc).__name__}: {exc}"})
        missing = tensorrt_available()
        if missing:
            rows.append({"check": "tensorrt", "ok": None, "detail": f"absent: {missing}"})
        else:
            rows.extend(_trt_rows(path, x, ort_out, Path(tmp)))
    return {"environment": env, "checks": rows,
            "ok": all(r["ok"] is not False for r in rows)}


def _trt_rows(path: Path, x: np.ndarray, ort_out: np.ndarray | None, tmp: Path) -> list[dict]:
    from edgeflow.runtime.bundle import TensorSpec
    from edgeflow.runtime.trt_build import BuildOptions, EngineCache, build_engine, device_info, select_flags
    from edgeflow.runtime.trt_runner import TrtRunner, deserializes

    rows = []
    try:
        dev = device_info()
        rows.append({"check": "tensorrt: device", "ok": True,
                     "detail": f"TensorRT {dev.trt_version}, {dev.gpu_name}, SM {dev.sm}, "
                               f"{dev.dla_cores} DLA cores"})
    except Exception as exc:
        return [{"check": "tensorrt: device", "ok": False, "detail": f"{type(exc).__name__}: {exc}"}]
    inputs = [TensorSpec("x", ("N", 3, 16, 16), "float32")]
    for precision, tol in (("fp32", 2e-3), ("fp16", 5e-2)):
        name = f"tensorrt {precision}: build + run vs onnxruntime"
        try:
            opts = BuildOptions.for_precision(precision, batch=(1, 4, 8), workspace_bytes=1 << 26)
            plan = select_flags(opts, dev)
            engine, how = EngineCache(tmp / "engines").get(
                f"tiny-{precision}", path, inputs, opts, dev, builder=build_engine,
                loader=deserializes, plan=plan)
            with TrtRunner(engine) as r:
                out = r.infer({"x": x})["y"]
            if ort_out is None:
                rows.append({"check": name, "ok": False, "detail": "no ONNX Runtime output to compare"})
                continue
            err = float(np.abs(out - ort_out).max())
            rows.append({"check": name, "ok": err <= tol,
                         "detail": f"{how}; flags {list(plan.flags)}; max abs diff {err:.2e} "
                                   f"(tol {tol:g})"})
        except Exception as exc:
            rows.append({"check": name, "ok": False, "detail": f"{type(exc).__name__}: {exc}"})
    return rows
