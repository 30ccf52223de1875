"""``edgeflow compile``: the whole pipeline in one command (flags generated from the config)."""

from __future__ import annotations

import inspect
from pathlib import Path

import typer
from rich.markup import escape

from edgeflow.cli.common import command, emit, err_console
from edgeflow.pipeline.config import build_config, flag_fields, saved_config

_FIXED = [
    inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Path | None,
                      default=typer.Option(None, "--config", "-c", help="TOML file of options "
                                           "(flags win over it).")),
    inspect.Parameter("print_config", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                      default=typer.Option(False, "--print-config", help="Print the resolved "
                                           "configuration as TOML and exit.")),
    inspect.Parameter("resume", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                      default=typer.Option(False, "--resume", help="Continue the run in OUTPUT "
                                           "(--output, else the config file's): its saved "
                                           "OUTPUT/config.toml is the base (then --config, then "
                                           "flags) and finished stages whose inputs did not change "
                                           "are reused.")),
    inspect.Parameter("as_json", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                      default=typer.Option(False, "--json", help="Print one JSON object with the "
                                           "bundle path and headline metrics.")),
]


# short names for the options of bring-your-own-model runs (the same as `edgeflow train`'s)
ALIASES = {"backbone.model": "--model", "backbone.weights": "--weights", "backbone.head": "--head"}


def _flag_params() -> list[inspect.Parameter]:
    params = []
    for key, flag, typ, default, help_text in flag_fields():
        ann = typ | None
        names = [f"--{flag}", *([ALIASES[key]] if key in ALIASES else [])]
        opt = (typer.Option(None, f"--{flag}/--no-{flag}", help=f"{help_text} [default: {default}]",
                            show_default=False) if typ is bool else
               typer.Option(None, *names, help=f"{help_text} [default: {default}]",
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
      edgeflow compile --config edgeflow.toml --prune-sparsity 0.6 --output runs/s60
      edgeflow compile --output runs/s60 --resume
      edgeflow compile --model my_models.nets:build --head fc --prune-granularity weight

    Your own model (--model package.module:build) is imported again by --resume and by
    `edgeflow export --weights`; the bundle it makes never needs it (ONNX only).

    Every run writes its resolved configuration to OUTPUT/config.toml; --resume starts from it.
    """
    config_file = kwargs.pop("config")
    print_config = kwargs.pop("print_config")
    resume = kwargs.pop("resume")
    as_json = kwargs.pop("as_json")
    overrides = {k.replace("__", "."): v for k, v in kwargs.items() if v is not None}
    base = saved_config(file=config_file, overrides=overrides) if resume else None
    if base is not None and not base.is_file():
        if not as_json:
            err_console.print(f"[dim]--resume: {base} does not exist (no earlier run there, or one "
                              "from before runs saved their configuration); configuring from "
                              "defaults, --config and flags only")
        base = None
    cfg = build_config(file=config_file, overrides=overrides, base=base)
    if print_config:
        typer.echo(cfg.to_toml(), nl=False)
        return
    from edgeflow.pipeline.compile import run_compile

    result = run_compile(cfg, resume=resume, progress=not as_json,
                         log=(lambda m: None) if as_json else
                         (lambda m: err_console.print(f"[dim]{escape(str(m))}", highlight=False)))
    emit(result.summary(), as_json=as_json, human=result.human_summary())


compile_cmd.__signature__ = inspect.Signature(_FIXED + _flag_params())  # type: ignore[attr-defined]


def register(app: typer.Typer) -> None:
    command(app, "compile")(compile_cmd)
