"""The INT8 backbone TensorRT can build: explicit Q/DQ in TensorRT's form, checked before it ships.

The bundle's ``backbone.int8.onnx`` is ONNX Runtime's graph (uint8 asymmetric activations, int32
conv biases computed from theta inside the graph): TensorRT's ONNX parser rejects it (a
DequantizeLinear may only take float "activation" inputs, and zero points must be 0). This module
writes a second INT8 graph for TensorRT (:func:`quantize_for_tensorrt`):

- activations: symmetric int8 per tensor, zero point 0, scales from the calibration sample;
- weights: symmetric int8 per output channel, as float initializers through a Q/DQ pair (the
  form TensorRT 8.5 and 10 both parse; TensorRT folds the pair into int8 weights at build time);
- biases stay float (no int32 DequantizeLinear), and theta stays a float graph input added after
  each convolution, which TensorRT fuses into the convolution itself.

:func:`tensorrt_qdq_problems` checks exactly these rules on any graph, so a graph that would fail
TensorRT's parser on the device fails here first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeflow.errors import BackendError

# onnxruntime.quantization extra options that give TensorRT's Q/DQ form (see the module docstring)
TENSORRT_QDQ_OPTIONS = {"ActivationSymmetric": True, "WeightSymmetric": True,
                        "AddQDQPairToWeight": True, "QuantizeBias": False}
MIN_OPSET = 13  # per-channel (axis) Q/DQ


def quantize_for_tensorrt(fp32_onnx: str | Path, out_onnx: str | Path, *, sample: np.ndarray,
                          method: str = "entropy", extra_inputs: dict[str, np.ndarray] | None = None,
                          batch_size: int = 16) -> Path:
    """Write TensorRT's INT8 Q/DQ form of ``fp32_onnx`` to ``out_onnx``; check it; return the path.

    ``sample``: preprocessed float32 NCHW calibration images; ``extra_inputs``: fixed values of the
    other inputs while calibrating (a bundle backbone's theta: theta0; it stays a graph input).
    """
    from edgeflow.export.int8 import quantize_onnx_int8

    out = quantize_onnx_int8(fp32_onnx, out_onnx, sample=sample, method=method, per_channel=True,
                             batch_size=batch_size, activation="int8", extra_inputs=extra_inputs,
                             theta_mode="float", extra_options=TENSORRT_QDQ_OPTIONS)
    problems = tensorrt_qdq_problems(out, float_inputs=tuple(extra_inputs or ()))
    if problems:
        Path(out).unlink(missing_ok=True)
        raise BackendError(f"the TensorRT INT8 graph breaks TensorRT's Q/DQ rules: "
                           f"{'; '.join(problems[:5])}")
    return out


def tensorrt_qdq_problems(path: str | Path, *, float_inputs: tuple[str, ...] = ()) -> list[str]:
    """Why TensorRT's ONNX parser would reject (or mis-read) this Q/DQ graph; [] when it fits.

    Rules: opset >= 13; every zero point int8 and 0; no DequantizeLinear of an integer initializer
    (int8 weights or int32 biases: "only activation types allowed"); weight Q/DQ per output
    channel; at least one Q/DQ pair; ``float_inputs`` are float32 graph inputs.
    """
    import onnx
    from onnx import TensorProto, numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    problems: list[str] = []
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < MIN_OPSET:
        problems.append(f"opset {opset} < {MIN_OPSET}")
    inits = {i.name: i for i in g.initializer}
    consts = {n.output[0]: n.attribute[0].t for n in g.node if n.op_type == "Constant"}
    tensors = {**consts, **inits}
    qdq = [n for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if not qdq:
        problems.append("no QuantizeLinear/DequantizeLinear nodes (not an INT8 graph)")
    for n in qdq:
        if len(n.input) > 2 and n.input[2]:
            zp = tensors.get(n.input[2])
            if zp is None:
                problems.append(f"{n.name or n.op_type}: zero point {n.input[2]} is not a constant")
            elif zp.data_type != TensorProto.INT8:
                problems.append(f"{n.name or n.op_type}: zero point type "
                                f"{TensorProto.DataType.Name(zp.data_type)}, TensorRT needs INT8")
            elif np.any(numpy_helper.to_array(zp) != 0):
                problems.append(f"{n.name or n.op_type}: non-zero zero point (asymmetric)")
        if n.op_type == "DequantizeLinear" and n.input[0] in tensors:
            t = tensors[n.input[0]]
            problems.append(f"{n.name or n.op_type}: dequantizes the "
                            f"{TensorProto.DataType.Name(t.data_type)} initializer {n.input[0]}; "
                            "TensorRT takes only float inputs there (Q/DQ pair on float weights)")
        if n.op_type == "QuantizeLinear" and n.input[0] in inits:  # a weight
            w = numpy_helper.to_array(inits[n.input[0]])
            scale = numpy_helper.to_array(tensors[n.input[1]]) if n.input[1] in tensors else None
            if w.ndim >= 2 and (scale is None or scale.size != w.shape[_axis(n)]):
                problems.append(f"{n.name or n.op_type}: weight {n.input[0]} {list(w.shape)} is "
                                "not quantised per output channel")
    graph_inputs = {i.name: i for i in g.input if i.name not in inits}
    for name in float_inputs:
        vi = graph_inputs.get(name)
        if vi is None or vi.type.tensor_type.elem_type != TensorProto.FLOAT:
            problems.append(f"{name} must stay a float32 graph input")
    return problems


def _axis(node) -> int:
    for a in node.attribute:
        if a.name == "axis":
            return int(a.i)
    return 1  # ONNX's default axis for QuantizeLinear


TENSORRT_INT8_FILE = "backbone.int8.trt.onnx"


def bundle_tensorrt_int8(bundle: str | Path, out_dir: str | Path, *, sample: np.ndarray,
                         method: str = "entropy") -> dict[str, Path]:
    """TensorRT's INT8 graph of a bundle's backbone (theta0 fixed while calibrating), written into
    ``out_dir``: the ``add`` entry for :func:`edgeflow.runtime.bundle.update_bundle`, whose
    manifest then needs ``{"tensorrt": {"int8": TENSORRT_INT8_FILE}}`` (:data:`TENSORRT_MANIFEST`)."""
    from edgeflow.runtime.bundle import load_bundle

    b = load_bundle(bundle)
    out = Path(out_dir) / TENSORRT_INT8_FILE
    quantize_for_tensorrt(b.graph_path("backbone"), out, sample=sample, method=method,
                          extra_inputs={"theta": b.theta0()})
    return {TENSORRT_INT8_FILE: out}


TENSORRT_MANIFEST = {"tensorrt": {"int8": TENSORRT_INT8_FILE, "format": "qdq-int8-symmetric"}}
