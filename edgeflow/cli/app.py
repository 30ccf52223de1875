"""Root of the ``edgeflow`` command: registers command groups and turns errors into one line."""

from __future__ import annotations

import os
import sys
import traceback

import typer

from edgeflow import __version__
from edgeflow.cli import (
    adapt_cmd,
    calibrate_cmd,
    compile_cmd,
    data_cmd,
    export_cmd,
    model_cmd,
    prune_cmd,
    runtime_cmd,
    targets_cmd,
    train_cmd,
    trust_cmd,
)
from edgeflow.cli.common import JSON_OPT, STATE, command, emit

app = typer.Typer(
    name="edgeflow",
    help="Prune vision backbones (Hyperflows), meta-train a drift network (HyperFlow), export "
    "bundles for Jetson-class devices, and adapt them on the device without backprop.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors.")) -> None:
    """EdgeFlow: edge deployment with on-device few-shot adaptation."""
    STATE["debug"] = debug


@command(app)
def version(as_json: bool = JSON_OPT) -> None:
    """Print the EdgeFlow version."""
    emit({"edgeflow": __version__}, as_json=as_json, human=f"edgeflow {__version__}")


app.add_typer(data_cmd.app, name="data")
train_cmd.register(app)
prune_cmd.register(app)
app.add_typer(targets_cmd.app, name="targets")
app.add_typer(model_cmd.app, name="model")
calibrate_cmd.register(app)
export_cmd.register(app)
runtime_cmd.register(app)
trust_cmd.register(app)
adapt_cmd.register(app)
compile_cmd.register(app)


def main() -> None:
    """The ``edgeflow`` entry point; under torchrun each worker ends through
    :func:`edgeflow.distributed.finish` (see there for why)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        app()
        return
    from edgeflow import distributed

    code = 1
    try:
        app()
        code = 0
    except SystemExit as exc:  # sys.exit("message") prints the message and exits 1, as Python does
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        if code == 1 and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    except BaseException:  # printed here: finish() ends the process without unwinding
        traceback.print_exc()
    distributed.finish(code)


if __name__ == "__main__":
    main()
