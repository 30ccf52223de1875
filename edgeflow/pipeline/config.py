"""The compile configuration: frozen sections, TOML files, command-line flags, one precedence rule.

Precedence: built-in defaults < ``--config FILE`` (TOML) < flags. ``--resume`` adds one layer at
the bottom: the configuration the run being resumed saved in its folder (``OUTPUT/config.toml``,
written by every compile), so defaults < that file < ``--config FILE`` < flags; a resumed run is
the same run unless something is said again. Every field of every section is a
flag, generated from the dataclasses below (``--prune-sparsity 0.5`` sets ``[prune] sparsity``), so
the TOML file and the command line can never disagree about what exists. Unknown sections or keys
are errors that list the valid ones; every value's type (strictly: ``"3"`` is not an int) and range
is checked when the configuration is made (:mod:`edgeflow.pipeline.validate`).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from edgeflow.errors import ConfigError
from edgeflow.pipeline.validate import typed

try:  # Python 3.11+; JetPack 6 ships 3.10, where the tomli backport is a dependency
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class DataSection:
    """Where the images come from. 'digits' is built in (no download)."""

    base: str = field(default="digits", metadata={"help": "Training data for the backbone and "
                                                  "meta-training (directory, .zip or 'digits')."})
    novel: str = field(default="digits", metadata={"help": "Few-shot evaluation data with classes "
                                                   "unseen in training."})
    val: str = field(default="", metadata={"help": "Validation data for hyper-parameters (empty: "
                                           "part of base)."})
    base_classes: str = field(default="0-4", metadata={"help": "Classes of 'base' to train on, e.g. "
                                                       "'0-4' or '0,2,5' (empty: all)."})
    novel_classes: str = field(default="5-9", metadata={"help": "Classes of 'novel' to evaluate on "
                                                        "(empty: all)."})
    size: int = field(default=16, metadata={"help": "Input image side in pixels."})
    limit: int = field(default=0, metadata={"help": "Use at most N base images (0: all)."})


@dataclass(frozen=True)
class BackboneSection:
    model: str = field(default="conv4", metadata={"help": "Model name (see `edgeflow train --help`) "
                                                  "or your own model as package.module:build, a "
                                                  "callable returning a torch.nn.Module; later "
                                                  "steps (--resume, `edgeflow export --weights`) "
                                                  "import it again, bundles never do."})
    weights: str = field(default="", metadata={"help": "Start from this checkpoint, or for your own "
                                               "model a state dict in its own names, or 'imagenet' "
                                               "for a zoo model's published ImageNet weights "
                                               "(efficientnet_lite0; empty: train from scratch, or "
                                               "use the model as built)."})
    head: str = field(default="", metadata={"help": "Your own model's classifier Linear layer, e.g. "
                                            "'fc' (empty: the one Linear that gives the output)."})
    width: int = field(default=32, metadata={"help": "Model width (0: the model's default; zoo "
                                             "models only)."})
    epochs: int = field(default=12, metadata={"help": "Backbone training epochs (0: use weights "
                                              "as they are)."})
    lr: float = field(default=0.05, metadata={"help": "Peak learning rate (SGD, cosine)."})
    batch_size: int = field(default=128, metadata={"help": "Batch size for every training stage."})
    freeze_bn: bool = field(default=False, metadata={
        "help": "Keep BatchNorm statistics frozen in every training stage (backbone, pruning, "
                "recovery): for a pretrained network fine-tuned on little data."})


@dataclass(frozen=True)
class PruneSection:
    enabled: bool = field(default=True, metadata={"help": "Prune the backbone."})
    method: str = field(default="hyperflows", metadata={"help": "hyperflows, gmp, magnitude or "
                                                        "random."})
    granularity: str = field(default="channel", metadata={"help": "weight, n:m or channel."})
    sparsity: float = field(default=0.5, metadata={"help": "Fraction of prunable weights to remove, "
                                                   "in (0, 1)."})
    epochs: int = field(default=4, metadata={"help": "Pruning epochs."})
    regrowth_epochs: int = field(default=1, metadata={"help": "Regrowth epochs (pressure off)."})
    recovery_epochs: int = field(default=2, metadata={"help": "Fine-tune epochs after pruning."})
    lr: float = field(default=0.0, metadata={"help": "Peak learning rate of the pruning phase (SGD, "
                                             "cosine; 0: the library's 0.1, for a network trained "
                                             "here; a pretrained one wants far less, e.g. 0.01)."})


@dataclass(frozen=True)
class AdaptSection:
    enabled: bool = field(default=True, metadata={"help": "Meta-train a HyperFlow drift network."})
    theta_max: int = field(default=64, metadata={"help": "Largest number of adapted biases."})
    tasks: int = field(default=100, metadata={"help": "Base-class training tasks for trajectories."})
    starts: int = field(default=2, metadata={"help": "Noisy starts per training task."})
    val_tasks: int = field(default=24, metadata={"help": "Validation tasks (early stopping, teacher "
                                                 "recipe, Euler step count)."})
    meta_steps: int = field(default=500, metadata={"help": "Drift meta-training steps."})
    steps: int = field(default=0, metadata={"help": "Euler steps on the device (0: chosen on val)."})
    method: str = field(default="euler", metadata={"help": "Integrator: euler, heun or rk4."})
    objective: str = field(default="outcome", metadata={
        "help": "trajectory (regress the teacher's paths, the paper's HyperFlow) or outcome (then "
                "train on the query loss after adaptation)."})
    outcome_steps: int = field(default=300, metadata={"help": "Outcome meta-training steps."})
    euler_steps: int = field(default=4, metadata={"help": "Outcome drift: Euler steps on the "
                                                  "device (trained with them)."})
    loop_every: int = field(default=0, metadata={"help": "Outcome drift: re-read the support set "
                                                 "every N Euler steps (0: open loop)."})
    selection_tasks: int = field(default=1000, metadata={
        "help": "Fresh val tasks that choose the outcome drift's weights and report its gain "
                "(>= 1000 keeps selection noise near 1 point)."})
    aux_weight: float = field(default=0.0, metadata={
        "help": "Outcome drift: weight of the trajectory regression kept as an auxiliary term, "
                "falling linearly to 0 by the last outcome step (0: off)."})
    stats: bool = field(default=True, metadata={
        "help": "Outcome drift: read the support statistics at the theta layers (false: class "
                "prototypes only, an ablation)."})
    shot_tokens: bool = field(default=False, metadata={
        "help": "Outcome drift: its task encoder also reads each support image's features, not "
                "only the class prototypes."})


@dataclass(frozen=True)
class ExportSection:
    target: str = field(default="cpu", metadata={"help": "Device profile name or TOML path."})
    int8: str = field(default="auto", metadata={"help": "auto (when the target wants INT8), yes or "
                                                "no."})
    calibration_samples: int = field(default=256, metadata={"help": "INT8 calibration images."})


@dataclass(frozen=True)
class EvalSection:
    ways: int = field(default=5, metadata={"help": "Classes per few-shot episode."})
    shots: str = field(default="1,5", metadata={"help": "Support images per class, e.g. '1,5'."})
    queries: int = field(default=15, metadata={"help": "Query images per class."})
    episodes: int = field(default=100, metadata={"help": "Episodes per shot count."})
    seed: int = field(default=0, metadata={"help": "Seed of the evaluation episodes."})
    cross_domain: str = field(default="", metadata={
        "help": "Other domains to evaluate few-shot on as well, comma-separated datasets (e.g. "
                "'../shared/data/mnist/test.zip,../shared/data/gtsrb/test.zip'); no adaptation, "
                "re-centring and HyperFlow on the same episodes (fine-tuning only on the novel "
                "classes: it costs the most). Empty: none."})
    cross_episodes: int = field(default=0, metadata={"help": "Episodes per shot count on each "
                                                     "cross-domain set (0: eval.episodes)."})


@dataclass(frozen=True)
class CompileConfig:
    """The whole compile configuration; ``output`` is the folder for the bundle and report."""

    output: str = "edgeflow-out"
    seed: int = 0
    device: str = "auto"
    data: DataSection = DataSection()
    backbone: BackboneSection = BackboneSection()
    prune: PruneSection = PruneSection()
    adapt: AdaptSection = AdaptSection()
    export: ExportSection = ExportSection()
    eval: EvalSection = EvalSection()

    def __post_init__(self) -> None:
        # here, not in build_config, so that no way of making a CompileConfig skips the checks
        from edgeflow.pipeline.validate import check

        check(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        """The resolved configuration as a TOML file that ``--config`` reads back."""
        top = [f"{k} = {_toml_value(v)}" for k, v in self.to_dict().items() if not isinstance(v, dict)]
        parts = ["\n".join(top)]
        for name, section in self.to_dict().items():
            if isinstance(section, dict):
                body = "\n".join(f"{k} = {_toml_value(v)}" for k, v in section.items())
                parts.append(f"[{name}]\n{body}")
        return "\n\n".join(parts) + "\n"

    def digest(self, *sections: str) -> str:
        """A stable JSON of the named sections (all when none), used for stage cache keys."""
        d = self.to_dict()
        return json.dumps({s: d[s] for s in sections} if sections else d, sort_keys=True)


SAVED_CONFIG = "config.toml"  # every compile writes its resolved configuration here, in OUTPUT
SECTIONS = {f.name: f.type for f in fields(CompileConfig) if dataclasses.is_dataclass(f.default)}


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))


def parse_int_list(text: str, *, name: str, maximum: int | None = None) -> list[int]:
    """'1,5' -> [1, 5]; '0-4' -> [0, 1, 2, 3, 4]; '' -> [].

    A reversed range ('4-0') or a non-blank text that lists nothing (',') is an error, not an empty
    list: an empty class list means *all* classes, so either would silently select every class.
    With ``maximum``, larger numbers are refused before a range is expanded.
    """
    out: list[int] = []
    try:
        for part in filter(None, (p.strip() for p in str(text).split(","))):
            lo, hi = (int(x) for x in part.split("-", 1)) if "-" in part else (int(part),) * 2
            if lo > hi:
                raise ConfigError(f"{name}: the range {part!r} is reversed, so it would select "
                                  f"nothing; write it as '{hi}-{lo}'")
            if maximum is not None and hi > maximum:
                raise ConfigError(f"{name}: {hi} is above {maximum} (in {text!r}); check the value")
            out.extend(range(lo, hi + 1))
    except ValueError as exc:
        raise ConfigError(f"{name}: cannot read {text!r} as a list of integers like '1,5' or "
                          "'0-4'") from exc
    if not out and str(text).strip():
        raise ConfigError(f"{name}: {text!r} lists no numbers; write e.g. '1,5' or '0-4' (or leave "
                          "it empty)")
    return out


def _section_classes() -> dict[str, type]:
    hints = typing.get_type_hints(CompileConfig)
    return {name: hints[name] for name in SECTIONS}


def _check_keys(kind: str, given: dict, valid: list[str]) -> None:
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise ConfigError(f"unknown {kind} {unknown}; valid: {', '.join(valid)}")


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise ConfigError(f"config file {path} {what}; `edgeflow compile --print-config "
                          "> edgeflow.toml` writes one to start from")
    try:
        return tomllib.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start}); TOML files "
                          "must be UTF-8: save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read ({exc.strerror}); check it and its "
                          "permissions") from None


def _layer(data: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``data``, key by key inside sections (a section is not replaced whole)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key].update(value)
        else:
            out[key] = value
    return out


def saved_config(*, file: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Path:
    """Where the run that these arguments name saved its configuration: ``OUTPUT/config.toml`` with
    OUTPUT from the ``output`` override (``--output``), else from ``file``, else the default."""
    output = (overrides or {}).get("output")
    if output is None and file is not None:
        output = _read_toml(Path(file)).get("output")
    if output is None:
        return Path(CompileConfig.output) / SAVED_CONFIG
    return Path(typed(output, str, "output")) / SAVED_CONFIG  # checked: `output = 3` is no path


def build_config(*, file: str | Path | None = None, overrides: dict[str, Any] | None = None,
                 base: str | Path | None = None) -> CompileConfig:
    """Defaults, then ``base`` (a run's saved ``config.toml``, for ``--resume``), then the TOML
    ``file``, then ``overrides`` ({'prune.sparsity': 0.7, 'seed': 1})."""
    data: dict[str, Any] = {}
    if base is not None:
        data = _read_toml(Path(base))
    if file is not None:
        data = _layer(data, _read_toml(Path(file)))
    for key, value in (overrides or {}).items():
        if "." in key:
            section, name = key.split(".", 1)
            data.setdefault(section, {})[name] = value
        else:
            data[key] = value
    classes = _section_classes()
    top_types = typing.get_type_hints(CompileConfig)
    _check_keys("config keys", data, [f.name for f in fields(CompileConfig)])
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in classes:
            if not isinstance(value, dict):
                raise ConfigError(f"[{key}] must be a table of options")
            cls = classes[key]
            hints = typing.get_type_hints(cls)
            _check_keys(f"[{key}] keys", value, list(hints))
            kwargs[key] = cls(**{k: typed(v, hints[k], f"{key}.{k}") for k, v in value.items()})
        else:
            kwargs[key] = typed(value, top_types[key], key)
    return CompileConfig(**kwargs)


def flag_fields() -> list[tuple[str, str, type, Any, str]]:
    """(dotted key, flag name, type, default, help) for every option: the CLI's flags."""
    out = [("output", "output", str, CompileConfig.output, "Folder for the bundle and report."),
           ("seed", "seed", int, CompileConfig.seed, "Seed for training and sampling."),
           ("device", "device", str, CompileConfig.device, "auto, cpu, cuda or cuda:N.")]
    for section, cls in _section_classes().items():
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            out.append((f"{section}.{f.name}", f"{section}-{f.name}".replace("_", "-"), hints[f.name],
                        f.default, f.metadata.get("help", "")))
    return out
