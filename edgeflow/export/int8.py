"""INT8 backbones as QDQ ONNX, calibrated on a saved sample (ONNX Runtime quantisation).

``quantize_onnx_int8(fp32, out, sample=...)`` inserts QuantizeLinear/DequantizeLinear pairs around
every quantisable op: weights per output channel (symmetric int8), activations per tensor with
ranges from the calibration sample (entropy, percentile or min-max). The same QDQ graph runs on ONNX
Runtime's CPU provider here and is what TensorRT >= 10.1 expects for explicit INT8 (implicit
calibration with IInt8EntropyCalibrator2 is deprecated there and removed in TensorRT 11).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from edgeflow.errors import BackendError, ConfigError, DataError

log = logging.getLogger(__name__)

# Name -> onnxruntime.quantization.CalibrationMethod attribute (resolved lazily: importing
# onnxruntime.quantization pulls in onnx and sympy).
METHODS: dict[str, str] = {"entropy": "Entropy", "percentile": "Percentile", "minmax": "MinMax"}


def _reader_class():
    from onnxruntime.quantization import CalibrationDataReader

    class SampleReader(CalibrationDataReader):
        """Feeds a (N, C, H, W) sample in batches of ``batch_size``, plus the constant extra inputs."""

        def __init__(self, sample: np.ndarray, input_name: str, batch_size: int,
                     extra_inputs: dict[str, np.ndarray]) -> None:
            self.sample, self.input_name, self.batch_size = sample, input_name, batch_size
            self.extra_inputs = extra_inputs
            self._pos = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self._pos >= len(self.sample):
                return None
            batch = self.sample[self._pos: self._pos + self.batch_size]
            self._pos += self.batch_size
            return {self.input_name: np.ascontiguousarray(batch, dtype=np.float32), **self.extra_inputs}

        def rewind(self) -> None:
            self._pos = 0

    return SampleReader


def even_batch(n: int, batch_size: int) -> int:
    """The largest batch <= ``batch_size`` that divides ``n``.

    ORT's histogram collectors stack per-batch arrays (np.asarray of a list), which fails when the
    last batch is shorter (seen with the percentile method in onnxruntime 1.31), so every batch
    must have the same size.
    """
    return next(b for b in range(min(batch_size, n), 0, -1) if n % b == 0)


# Quantised op types for graphs with extra (theta) inputs in theta_mode "float" (the fallback when
# theta cannot go into the conv biases). Quantising the theta Adds per tensor ties their ranges to
# theta0 and the error grows as adaptation moves theta (ResNet-20, onnxruntime 1.31: relative
# feature error 0.039 at theta0 -> 0.071 at a 0.3-std move with every op quantised; 0.033 -> 0.031
# with convolutions only, at the same speed), so only convolutions and matmuls run in INT8 there.
CONV_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm", "GlobalAveragePool", "AveragePool", "MaxPool")


def _image_input(path: Path, extra_inputs: dict[str, np.ndarray]) -> str:
    """The one graph input the sample feeds; every other input must be in ``extra_inputs``."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in inits]
    unknown = sorted(set(extra_inputs) - set(inputs))
    if unknown:
        raise ConfigError(f"extra_inputs {unknown} are not inputs of {path} (inputs: {inputs})")
    images = [n for n in inputs if n not in extra_inputs]
    if len(images) != 1:
        raise ConfigError(f"{path} has inputs {inputs}; calibration feeds the sample to one image "
                          "input, so give every other input a value in extra_inputs (e.g. "
                          "{'theta': theta0})")
    return images[0]


def quantize_onnx_int8(fp32_onnx: str | Path, out_onnx: str | Path, *, sample: np.ndarray,
                       method: str = "entropy", per_channel: bool = True, batch_size: int = 16,
                       pre_process: bool = True, percentile: float = 99.999,
                       activation: str = "uint8", extra_inputs: dict[str, np.ndarray] | None = None,
                       op_types: tuple[str, ...] | str | None = None, theta_mode: str = "auto",
                       extra_options: dict | None = None) -> Path:
    """Write a QDQ INT8 copy of ``fp32_onnx`` to ``out_onnx``, calibrated on ``sample``.

    ``sample`` is preprocessed float32 NCHW (see :func:`edgeflow.calibration.draw_calibration_sample`).
    ``method``: entropy (KL, TensorRT's choice), percentile (``percentile`` of |x|) or minmax.
    ``per_channel`` quantises weights per output channel (much smaller accuracy loss for CNNs).
    ``pre_process`` runs ORT's ``quant_pre_process`` first (shape inference + graph optimisation:
    BatchNorm folding and fusions), so the quantiser sees the graph ORT will run.
    ``activation``: uint8 (U8S8, the fast path of ORT's x86 kernels) or int8 (S8S8, symmetric, the
    form TensorRT requires). ``extra_inputs`` gives fixed values of the other graph inputs (a
    bundle backbone's ``theta``: pass theta0); ``op_types`` limits which ops are quantised (None:
    all for a plain graph, :data:`CONV_OPS` when there are extra inputs; "all": every op).
    ``extra_options`` go to ``quantize_static`` on top of the symmetric settings (TensorRT's form:
    :mod:`edgeflow.export.int8_trt`). The file is written atomically. Returns ``out_onnx``.

    Example::

        sample = draw_calibration_sample(ds, samples=256, seed=0, preprocess=spec)
        quantize_onnx_int8("backbone.onnx", "backbone.int8.onnx", sample=sample)
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    fp32_onnx, out_onnx = Path(fp32_onnx), Path(out_onnx)
    if method not in METHODS:
        from edgeflow.errors import unknown_name

        raise unknown_name("calibration method", method, list(METHODS))
    if activation not in ("uint8", "int8"):
        raise ConfigError(f"activation must be uint8 or int8, got {activation!r}")
    if not fp32_onnx.is_file():
        raise ConfigError(f"{fp32_onnx} does not exist; export the backbone to ONNX first")
    sample = np.asarray(sample)
    if sample.ndim != 4 or sample.dtype != np.float32 or len(sample) == 0:
        raise DataError(f"calibration sample must be non-empty float32 (N, C, H, W), got {sample.dtype} "
                        f"{sample.shape}; draw it with draw_calibration_sample")
    extra_inputs = {k: np.asarray(v) for k, v in (extra_inputs or {}).items()}
    input_name = _image_input(fp32_onnx, extra_inputs)
    if theta_mode not in ("auto", "bias", "float"):
        raise ConfigError(f"theta_mode must be auto, bias or float, got {theta_mode!r}")
    if len(extra_inputs) == 1 and theta_mode != "float":
        from edgeflow.export.int8_theta import quantize_theta_int8

        ((theta, theta0),) = extra_inputs.items()
        out_onnx.parent.mkdir(parents=True, exist_ok=True)

        def plain(src: Path, dst: Path) -> None:
            quantize_onnx_int8(src, dst, sample=sample, method=method, per_channel=per_channel,
                               batch_size=batch_size, pre_process=pre_process, percentile=percentile,
                               activation=activation, op_types=op_types,
                               extra_options=extra_options)

        try:
            if quantize_theta_int8(fp32_onnx, out_onnx, theta=theta, theta0=theta0,
                                   image_input=input_name, sample=sample, quantize=plain):
                return out_onnx
        except BackendError as exc:  # the surgery's own check failed: the float path still works
            if theta_mode == "bias":
                raise
            log.warning("theta-in-bias INT8 failed (%s); quantising with FP32 theta Adds", exc)
        if theta_mode == "bias":
            raise ConfigError(f"{fp32_onnx}: {theta} does not enter only as Add(Conv, theta slice); "
                              "use theta_mode='float'")
    if op_types is None and extra_inputs:
        op_types = CONV_OPS
    if op_types == "all":
        op_types = None
    out_onnx.parent.mkdir(parents=True, exist_ok=True)
    extra: dict = {"ActivationSymmetric": activation == "int8", "WeightSymmetric": True,
                   **(extra_options or {})}
    if method == "percentile":
        extra["CalibPercentile"] = percentile
    with tempfile.TemporaryDirectory(dir=out_onnx.parent, prefix=".int8-") as tmp:
        src = fp32_onnx
        if pre_process:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            src = Path(tmp) / "pre.onnx"
            quant_pre_process(str(fp32_onnx), str(src), skip_symbolic_shape=False)
        dst = Path(tmp) / "int8.onnx"
        reader = _reader_class()(sample, input_name, even_batch(len(sample), batch_size), extra_inputs)
        # The calibrators print progress with print(); keep stdout clean for `--json` callers.
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(
                str(src), str(dst), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                activation_type=QuantType.QUInt8 if activation == "uint8" else QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=getattr(CalibrationMethod, METHODS[method]), extra_options=extra,
                op_types_to_quantize=list(op_types) if op_types else None)
        os.replace(dst, out_onnx)
    return out_onnx


def count_qdq(path: str | Path) -> dict[str, int]:
    """Q/DQ node counts (0 means not quantised) and whether theta feeds the INT8 conv biases."""
    import onnx

    g = onnx.load(str(path)).graph
    ops = [n.op_type for n in g.node]
    return {"QuantizeLinear": ops.count("QuantizeLinear"),
            "DequantizeLinear": ops.count("DequantizeLinear"),
            "theta_in_bias": any(i.name == "edgeflow_theta_index" for i in g.initializer)}
