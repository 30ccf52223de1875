"""``edgeflow compile``: the whole pipeline in one command (flags generated from the config)."""

from __future__ import annotations

import inspect
from pathlib import Path

import typer
from rich.markup import escape

from edgeflow.cli.common import command, console, emit
from edgeflow.pipeline.config import build_config, flag_fields

_FIXED = [
    inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Path | None,
                      default=typer.Option(None, "--config", "-c", help="TOML file of options "
                                           "(flags win over it).")),
    inspect.Parameter("print_config", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                      default=typer.Option(False, "--print-config", help="Print the resolved "
                                           "configuration as TOML and exit.")),
    inspect.Parameter("resume", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                      default=typer.Option(False, "--resume", help="Reuse finished stages whose "
                                           "inputs did not change.")),
    inspect.Parameter("as_json", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                      default=typer.Option(False, "--json", help="Print one JSON object with the "
                                           "bundle path and headline metrics.")),
]


def _flag_params() -> list[inspect.Parameter]:
    params = []
    for key, flag, typ, default, help_text in flag_fields():
        ann = typ | None
        opt = (typer.Option(None, f"--{flag}/--no-{flag}", help=f"{help_text} [default: {default}]",
                            show_default=False) if typ is bool else
               typer.Option(None, f"--{flag}", help=f"{help_text} [default: {default}]",
                            show_default=False))
        params.append(inspect.Parameter(key.replace(".", "__"), inspect.Parameter.KEYWORD_ONLY,
                                        annotation=ann, default=opt))
    return params


def compile_cmd(**kwargs) -> None:
    """Prune, meta-train, export and evaluate: a deployable bundle and a report.

    With no options it runs the embedded default (scikit-learn digits: a small backbone trained on
    digits 0-4, few-shot evaluation on the held-out 5-9) in a few minutes on 2 CPU cores.

    Examples:
      edgeflow compile
      edgeflow compile --print-config > edgeflow.toml
      edgeflow compile --config examples/tiny-imagenet.toml --prune-sparsity 0.6 --resume
    """
    config_file = kwargs.pop("config")
    print_config = kwargs.pop("print_config")
    resume = kwargs.pop("resume")
    as_json = kwargs.pop("as_json")
    overrides = {k.replace("__", "."): v for k, v in kwargs.items() if v is not None}
    cfg = build_config(file=config_file, overrides=overrides)
    if print_config:
        typer.echo(cfg.to_toml(), nl=False)
        return
    from edgeflow.pipeline.compile import run_compile

    result = run_compile(cfg, resume=resume, progress=not as_json,
                         log=(lambda m: None) if as_json
                         else (lambda m: console.print(f"[dim]{escape(str(m))}")))
    emit(result.summary(), as_json=as_json, human=result.human_summary())


compile_cmd.__signature__ = inspect.Signature(_FIXED + _flag_params())  # type: ignore[attr-defined]


def register(app: typer.Typer) -> None:
    command(app, "compile")(compile_cmd)
