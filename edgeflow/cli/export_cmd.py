"""``edgeflow export``: a backbone checkpoint (+ drift) -> a verified bundle directory."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from edgeflow.cli.common import JSON_OPT, command, emit


def register(app: typer.Typer) -> None:
    command(app, "export")(export)


def export(
    weights: Path = typer.Option(..., "--weights", "-w", help="Backbone checkpoint (.pt/.th)."),
    output: Path = typer.Option(..., "--output", "-o", help="Bundle directory to write (replaced "
                                "atomically if it exists)."),
    model: str = typer.Option(None, "--model", "-m", help="Model name when the checkpoint does not "
                              "record it (resnet20, conv4, ..., or package.module:build). A "
                              "checkpoint of your own model records its package.module:build, "
                              "which is imported again here (so it must be importable)."),
    drift: Path = typer.Option(None, "--drift", help="Drift checkpoint from meta-training; without "
                               "it the bundle adapts by prototypes at theta0 only."),
    target: str = typer.Option(None, "--target", "-t", help="Target profile name recorded in the "
                               "manifest (engines are built on the device with `edgeflow build`)."),
    size: int = typer.Option(None, "--size", min=4, help="Input side in pixels (default: the "
                             "checkpoint's)."),
    parity_data: str = typer.Option(None, "--parity-data", help="Real images for the ONNX-vs-PyTorch "
                                    "parity check (default: the checkpoint's training data)."),
    max_theta: int = typer.Option(1024, "--max-theta", min=1, help="Theta size limit when there is "
                                  "no drift (the drift fixes theta otherwise)."),
    allow_resize: bool = typer.Option(True, "--resize/--no-resize", help="Let the runtime resize "
                                      "images of another size."),
    as_json: bool = JSON_OPT,
) -> None:
    """Export a backbone (theta as graph input, BatchNorm folded) and its drift to a bundle.

    Runs onnx.checker and a parity check against PyTorch on real images (max abs diff <= 1e-4).

    Example: edgeflow export --model resnet20 --weights ../shared/weights/cifar10-resnet20-12fca82f.th
    --parity-data ../shared/data/cifar10/test.zip --output runs/r20.bundle
    """
    from edgeflow.export.from_checkpoint import export_from_checkpoint

    res = export_from_checkpoint(weights=weights, output=output, model=model, drift=drift,
                                 target=target, size=size, parity_data=parity_data,
                                 max_theta=max_theta, allow_resize=allow_resize)
    emit(res, as_json=as_json,
         human=f"wrote [bold]{escape(str(res['output']))}[/] ({res['model']}, theta {res['theta_size']}, "
               f"{'with drift' if res['drift'] else 'no drift: prototypes at theta0'}); parity max "
               f"abs diff {res['parity_backbone_max_abs_diff']:.2e} on {res['parity_images']} images")
