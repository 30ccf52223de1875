"""What every command shares: JSON output, human output, data/model options."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from edgeflow.errors import EdgeflowError

console = Console()
STATE = {"debug": False}  # set by the root callback on every invocation
err_console = Console(stderr=True)

JSON_OPT = typer.Option(False, "--json", help="Print one JSON object on stdout (for scripts).")
NPROC_OPT = typer.Option(1, "--nproc", min=1, help="Run data-parallel in this many processes "
                         "(re-launches under torchrun; gloo on CPU, nccl on CUDA).")
DEVICE_OPT = typer.Option("auto", "--device", help="auto (CUDA when available), cpu, cuda or cuda:N.")


def emit(obj: dict[str, Any], *, as_json: bool, human: str | None = None) -> None:
    """Print ``obj`` as JSON (``--json``) or ``human`` text (default: key: value lines)."""
    if as_json:
        sys.stdout.write(json.dumps(obj, indent=None, sort_keys=False, default=_jsonable) + "\n")
        return
    if human is None:
        human = "\n".join(f"[bold]{escape(str(k))}[/]: {escape(str(v))}" for k, v in obj.items()
                          if not isinstance(v, (list, dict)))
    console.print(human)


def _jsonable(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def command(app: typer.Typer, name: str | None = None, **kwargs: Any) -> Callable:
    """Register a typer command whose EdgeflowError becomes one red line on stderr and exit 1.

    Use this instead of ``app.command`` so every command fails the same way; ``--debug`` (or
    ``EDGEFLOW_DEBUG=1``) re-raises to show the traceback.
    """

    def deco(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kw: Any) -> Any:
            try:
                return fn(*args, **kw)
            except EdgeflowError as exc:
                if STATE["debug"] or os.environ.get("EDGEFLOW_DEBUG"):
                    raise
                # the message quotes user text (paths, names, "[prune]"): escaped, so rich prints it
                # as written instead of eating brackets or raising MarkupError on "[/old]"
                err_console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, markup=True,
                                  soft_wrap=True)
                raise typer.Exit(1) from None

        app.command(name, **kwargs)(wrapper)
        return fn

    return deco


def maybe_relaunch(nproc: int) -> None:
    """``--nproc K`` outside torchrun: replace this process with ``torchrun ... -m edgeflow``."""
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        from edgeflow.distributed import relaunch_with_torchrun

        relaunch_with_torchrun(nproc)
