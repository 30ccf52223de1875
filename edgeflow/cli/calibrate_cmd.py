"""``edgeflow calibrate``: INT8 calibration sample + QDQ INT8 model for an FP32 ONNX backbone."""

from __future__ import annotations

import tempfile
from pathlib import Path

import typer
from rich.markup import escape

from edgeflow.cli.common import JSON_OPT, command, emit


def register(app: typer.Typer) -> None:
    command(app, "calibrate")(calibrate)


def _extra(specs: list[str]) -> dict:
    """NAME=FILE.npy pairs -> {name: array} (plain .npy only, never pickles)."""
    import numpy as np

    from edgeflow.errors import ConfigError

    out = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not Path(path).is_file():
            raise ConfigError(f"--extra-input {spec!r} must be NAME=FILE.npy with an existing file")
        try:
            out[name] = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise ConfigError(f"--extra-input {path} is not a plain .npy array ({exc})") from exc
    return out


def _floats(text: str | None) -> tuple[float, ...] | None:
    return tuple(float(v) for v in text.split(",")) if text else None


def calibrate(
    model: Path = typer.Argument(..., help="A bundle directory (its backbone gets an INT8 variant), "
                                 "or an FP32 backbone .onnx (one NCHW image input)."),
    output: Path = typer.Option(None, "--output", "-o", help="Folder for calibration.npy, "
                                "<model>.int8.onnx and calibration.json."),
    data: str = typer.Option(None, "--data", "-d", help="Calibration images: directory or .zip "
                             "(ImageFolder layout) from the training domain, or 'digits'."),
    samples: int = typer.Option(None, "--samples", "-n", min=1, help="Images in the sample, "
                                "stratified over classes (default 512)."),
    recipe: Path = typer.Option(None, "--recipe", help="A calibration/*.toml recipe; the options "
                                "given here override its values."),
    method: str = typer.Option(None, "--method", help="Activation ranges: entropy (KL, as TensorRT; "
                               "default), percentile (99.999% of |x|) or minmax."),
    seed: int = typer.Option(None, "--seed", help="Seed of the draw; same seed, same images (default 0)."),
    size: int = typer.Option(None, "--size", min=4, help="Image side (default: the ONNX input's)."),
    split: str = typer.Option(None, "--split", help="Split to read when the archive holds several."),
    mean: str = typer.Option(None, "--mean", help="Normalisation mean per channel, e.g. "
                             "0.485,0.456,0.406 (default ImageNet)."),
    std: str = typer.Option(None, "--std", help="Normalisation std per channel (default ImageNet)."),
    extra_input: list[str] = typer.Option(None, "--extra-input", help="NAME=FILE.npy: a fixed value "
                                          "for another graph input, e.g. theta=theta0.npy (repeatable)."),
    expect: str = typer.Option(None, "--expect", help="With a bundle: refuse it unless its "
                               "fingerprint is this (sha256:..., from `edgeflow inspect`)."),
    as_json: bool = JSON_OPT,
) -> None:
    """Draw a stratified, seeded calibration sample and write an INT8 (QDQ) copy of the model.

    The sample is saved as calibration.npy (it also feeds TensorRT's entropy calibrator on the
    device); the INT8 model runs on ONNX Runtime's CPU provider; calibration.json records the
    settings, hashes and an INT8-vs-FP32 check on held-out images.

    Example: edgeflow calibrate backbone.onnx --data ../shared/data/cifar10/train.zip --samples 512
    --output calibration/resnet20 --json

    Example: edgeflow calibrate backbone.onnx --recipe calibration/resnet20-cifar10.toml -o out/calib

    With a bundle, the bundle's preprocessing and theta0 are used, and the INT8 backbone, the
    sample and TensorRT's INT8 graph (backbone.int8.trt.onnx: symmetric Q/DQ that TensorRT's
    parser takes) are added to the bundle (atomically; the manifest lists the int8 precision):
    edgeflow calibrate runs/digits/bundle --data digits --samples 256
    """
    from edgeflow.calibration import CalibrationRecipe
    from edgeflow.errors import ConfigError
    from edgeflow.export.calibrate import calibrate_onnx

    if recipe is None and data is None:
        raise ConfigError("give the calibration images with --data PATH, or a --recipe")
    base = CalibrationRecipe.load(recipe) if recipe is not None else CalibrationRecipe(data=data)
    extras = _extra(extra_input or [])
    bundle = model if (model / "manifest.json").is_file() else None
    if bundle is not None:  # the bundle knows its preprocessing and theta0
        from edgeflow.runtime.bundle import load_bundle

        b = load_bundle(bundle, expect=expect)
        pre = b.preprocess
        size, mean, std = size or pre.size, mean or ",".join(map(str, pre.mean)), \
            std or ",".join(map(str, pre.std))
        extras.setdefault("theta", b.theta0())
        model = b.graph_path("backbone")  # confined to the bundle, not a symlink
    elif output is None:
        raise ConfigError("give --output for the calibration files of a plain .onnx model")
    r = base.with_overrides(data=data, samples=samples, method=method, seed=seed, size=size,
                            split=split, mean=_floats(mean), std=_floats(std))
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = output if output is not None else Path(tmp)
        rec = calibrate_onnx(model, recipe=r, output=out_dir, extra_inputs=extras,
                             progress=not as_json)
        if bundle is not None:
            import numpy as np

            from edgeflow.export.int8_trt import TENSORRT_MANIFEST, bundle_tensorrt_int8
            from edgeflow.runtime.bundle import update_bundle

            # TensorRT's own Q/DQ form (symmetric int8, float weights through Q/DQ, float theta)
            sample = np.load(out_dir / rec["sample"]["file"], allow_pickle=False)
            trt_int8 = bundle_tensorrt_int8(bundle, out_dir, sample=sample, method=r.method)
            update_bundle(bundle, add={"backbone.int8.onnx": out_dir / rec["int8"]["file"],
                                       "calibration_sample.npy": out_dir / rec["sample"]["file"],
                                       **trt_int8},
                          precisions={"int8": "backbone.int8.onnx"}, manifest=TENSORRT_MANIFEST)
            rec["tensorrt_int8"] = {"file": "backbone.int8.trt.onnx"}
            rec["bundle"] = str(bundle)
    chk = rec["held_out_check"]
    human = (f"wrote [bold]{escape(str(rec['output']))}[/]: {rec['sample']['file']} "
             f"{tuple(rec['sample']['shape'])}, "
             f"{rec['int8']['file']} ({rec['int8']['QuantizeLinear']} Q nodes), calibration.json")
    if chk:
        human += (f"\nheld-out check on {chk['images']} images: cosine {chk['mean_cosine']:.4f}, "
                  f"argmax agreement {chk['argmax_agreement']:.1%}")
    emit(rec, as_json=as_json, human=human)
