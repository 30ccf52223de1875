"""The ``edgeflow calibrate`` workflow on an ONNX file: sample -> INT8 QDQ ONNX -> record.

Writes into ``output``:
- ``calibration.npy``: the stratified, seeded sample (float32 NCHW, preprocessed) - the same file
  feeds the TensorRT entropy calibrator on the device;
- ``<model>.int8.onnx``: the QDQ INT8 model (runs on ONNX Runtime's CPU provider);
- ``calibration.json``: what was done (data, seed, method, preprocessing, class counts, sha256 of
  both files) and a held-out sanity check of INT8 against FP32.

Once bundles exist, the lead switches the first argument to a bundle: the preprocessing then comes
from its manifest, the files go into the bundle and the manifest lists ``int8`` among its precisions.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeflow.calibration import (
    CalibrationRecipe,
    atomic_write,
    calibration_indices,
    sample_digest,
    save_sample,
)
from edgeflow.data import Preprocess, load_dataset, preprocess
from edgeflow.errors import ConfigError, unknown_name
from edgeflow.export.int8 import METHODS, count_qdq, quantize_onnx_int8

HELD_OUT = 64  # images (not in the sample) on which INT8 is compared with FP32


def onnx_image_input(path: Path, extra: tuple[str, ...] = ()) -> tuple[str, int, int | None]:
    """(name, channels, side or None) of the NCHW image input: the one input not in ``extra``."""
    import onnx

    if not path.is_file():
        raise ConfigError(f"{path} does not exist; give the FP32 backbone .onnx")
    m = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    inputs = [i for i in m.graph.input if i.name not in inits and i.name not in extra]
    if len(inputs) != 1 or len(inputs[0].type.tensor_type.shape.dim) != 4:
        raise ConfigError(f"{path}: expected one NCHW image input, got "
                          f"{[(i.name, len(i.type.tensor_type.shape.dim)) for i in inputs]}; give "
                          "the other inputs fixed values (--extra-input theta=theta0.npy)")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    if dims[1] is None:
        raise ConfigError(f"{path}: the channel dimension of {inputs[0].name} is not fixed")
    side = dims[2] if dims[2] is not None and dims[2] == dims[3] else None
    return inputs[0].name, int(dims[1]), side


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _compare(fp32: Path, int8: Path, x: np.ndarray, input_name: str,
             extra_inputs: dict[str, np.ndarray]) -> dict[str, float]:
    """INT8 vs FP32 outputs on ``x``: mean cosine, relative error, argmax agreement."""
    import onnxruntime as ort

    feed = {input_name: x, **extra_inputs}
    outs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, feed)[0]
            for p in (fp32, int8)]
    a, b = (o.reshape(len(x), -1).astype(np.float64) for o in outs)
    cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    return {"images": len(x), "mean_cosine": float(cos.mean()),
            "relative_error": float(np.linalg.norm(a - b) / (np.linalg.norm(a) + 1e-12)),
            "argmax_agreement": float(np.mean(a.argmax(1) == b.argmax(1)))}


def calibrate_onnx(model: str | Path, *, recipe: CalibrationRecipe, output: str | Path,
                   extra_inputs: dict[str, np.ndarray] | None = None,
                   progress: bool = False) -> dict[str, Any]:
    """Draw the recipe's sample, write it and the INT8 model into ``output``; return the record.

    ``extra_inputs`` fixes the other graph inputs (a bundle backbone's theta: theta0).

    Example: ``calibrate_onnx("backbone.onnx", recipe=CalibrationRecipe(data="digits", samples=64),
    output="out/calib")``
    """
    model, output, r = Path(model), Path(output), recipe
    if r.method not in METHODS:  # fail before minutes of decoding images
        raise unknown_name("calibration method", r.method, list(METHODS))
    extra_inputs = dict(extra_inputs or {})
    input_name, channels, side = onnx_image_input(model, tuple(extra_inputs))
    size = r.size or side
    if size is None:
        raise ConfigError(f"{model} has a dynamic image size; pass --size")
    spec = Preprocess(size=size, channels=channels, **({"mean": r.mean} if r.mean else {}),
                      **({"std": r.std} if r.std else {}))
    t0 = time.time()
    ds = load_dataset(r.data, split=r.split, progress=progress)
    idx = calibration_indices(ds.labels, samples=r.samples, seed=r.seed)
    sample = preprocess(ds.images[idx], spec)
    rest = np.setdiff1d(np.arange(len(ds)), idx)
    output.mkdir(parents=True, exist_ok=True)
    sample_path = save_sample(output / "calibration.npy", sample)
    int8_path = output / f"{model.stem}.int8.onnx"
    if progress:
        from rich.console import Console

        with Console(stderr=True).status(f"calibrating ({r.method}) on {r.samples} images"):
            quantize_onnx_int8(model, int8_path, sample=sample, method=r.method, per_channel=r.per_channel,
                               extra_inputs=extra_inputs)
    else:
        quantize_onnx_int8(model, int8_path, sample=sample, method=r.method, per_channel=r.per_channel,
                           extra_inputs=extra_inputs)
    check = None
    if len(rest):
        held = rest[calibration_indices(ds.labels[rest], samples=min(HELD_OUT, len(rest)),
                                        seed=r.seed + 1)]
        check = _compare(model, int8_path, preprocess(ds.images[held], spec), input_name, extra_inputs)
    record = {
        "model": str(model), "model_sha256": _sha256(model), "recipe": r.to_dict(),
        "data": str(r.data), "samples": int(r.samples), "seed": r.seed, "method": r.method,
        "activation": "uint8", "weight": "int8 symmetric", "preprocess": spec.to_dict(),
        "input_name": input_name, "extra_inputs": sorted(extra_inputs),
        "class_counts": {ds.classes[c]: int(n) for c, n in
                         zip(*np.unique(ds.labels[idx], return_counts=True), strict=True)},
        "sample": {"file": sample_path.name, "shape": list(sample.shape),
                   "sha256": _sha256(sample_path), "digest": sample_digest(sample)},
        "int8": {"file": int8_path.name, "sha256": _sha256(int8_path), **count_qdq(int8_path)},
        "held_out_check": check, "seconds": round(time.time() - t0, 2),
    }
    import onnxruntime

    record["onnxruntime"] = onnxruntime.__version__
    _write_json(output / "calibration.json", record)
    return {**record, "output": str(output)}


def _write_json(path: Path, obj: dict) -> None:
    atomic_write(path, (json.dumps(obj, indent=2) + "\n").encode())
