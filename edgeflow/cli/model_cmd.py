"""``edgeflow model inspect``: what EdgeFlow makes of your own model, before any compile."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from edgeflow.cli.common import JSON_OPT, command, emit

app = typer.Typer(help="Your own model (package.module:build): what EdgeFlow chooses in it.",
                  no_args_is_help=True)


@command(app, "inspect")
def inspect_model(
    model: str = typer.Argument(..., help="package.module:build, a callable that returns a "
                                "torch.nn.Module (the current folder is searched too)."),
    head: str = typer.Option("", "--head", help="The classifier Linear layer, e.g. 'fc' "
                             "(default: the one Linear that gives the output)."),
    weights: Path = typer.Option(None, "--weights", "-w", help="A state dict to load (weights_only)."),
    size: int = typer.Option(32, "--size", min=4, help="Input image side to probe the model at."),
    in_channels: int = typer.Option(3, "--in-channels", min=1, help="Input channels."),
    theta_max: int = typer.Option(64, "--theta-max", min=1, help="Largest theta (as compile's "
                                  "--adapt-theta-max)."),
    export: bool = typer.Option(True, "--export/--no-export", help="Try the ONNX export too."),
    as_json: bool = JSON_OPT,
) -> None:
    """Build your model and say what EdgeFlow chose (head, features, BatchNorm layers, theta,
    input) and whether its features export to ONNX; or why it cannot use the model.

    Example: edgeflow model inspect my_models.nets:build --head fc --size 64
    """
    from edgeflow.export.model_check import check_model

    checked = check_model(model, head=head, input_size=size, in_channels=in_channels,
                          theta_max=theta_max, weights=weights, export=export)
    emit(checked.to_dict(), as_json=as_json,
         human="\n".join(escape(line) for line in checked.lines()))
