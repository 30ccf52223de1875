"""Every compile option's type and range, checked in one place when the configuration is built.

``CompileConfig.__post_init__`` calls :func:`check`, so a configuration that exists is a valid one:
``--print-config`` refuses every value checked here, and nothing reaches a stage (or
``OUTPUT/config.toml``, which ``--resume`` reads back) unchecked. Names that need the model, pruning,
integrator or target registries (and so torch, a second on import) are checked by ``run_compile``
before it creates OUTPUT or runs a stage, not here: ``--print-config`` stays instant and prints them.

Each error names the option as ``section.key``, says what it must be, and gives the flag to fix it.
Upper bounds are far above any real run; they exist so that a typo (an extra ``000``) is an error
instead of a 2.7 TiB allocation, a numpy overflow or a week of training.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeflow.errors import ConfigError

if TYPE_CHECKING:
    from edgeflow.pipeline.config import CompileConfig

# (lowest, highest) inclusive, for every int option. Seeds stop at 2**31 - 1 because stages add
# small offsets to them (``seed + 1``) and numpy's legacy seeding refuses 2**32 and above.
INT_BOUNDS: dict[str, tuple[int, int]] = {
    "seed": (0, 2**31 - 1),
    "data.size": (1, 1024),  # 1024 px: 3 MiB per RGB image, already 3 GiB for 1,000 images
    "data.limit": (0, 2**31 - 1),  # 0: all images
    "backbone.width": (0, 1024),  # 0: the model's default
    "backbone.epochs": (0, 100_000),  # 0: use the weights as they are (then weights are required)
    "backbone.batch_size": (1, 65_536),
    "prune.epochs": (1, 100_000),  # no pruning at all is --no-prune-enabled
    "prune.regrowth_epochs": (0, 100_000),
    "prune.recovery_epochs": (0, 100_000),
    "adapt.theta_max": (1, 100_000),
    "adapt.tasks": (1, 1_000_000),
    "adapt.starts": (1, 1_000),
    "adapt.val_tasks": (1, 1_000_000),
    "adapt.meta_steps": (1, 10_000_000),  # no meta-training at all is --no-adapt-enabled
    "adapt.steps": (0, 10_000),  # 0: chosen on the validation tasks
    "adapt.outcome_steps": (0, 10_000_000),  # 0: the regressed drift, re-selected and reported
    "adapt.euler_steps": (1, 1_000),
    "adapt.loop_every": (0, 1_000),  # 0: open loop
    "adapt.selection_tasks": (2, 1_000_000),
    "export.calibration_samples": (1, 1_000_000),
    "eval.ways": (2, 100_000),  # one way is no classification
    "eval.queries": (1, 10_000),
    "eval.episodes": (1, 1_000_000),
    "eval.seed": (0, 2**31 - 1),
    "eval.cross_episodes": (0, 1_000_000),  # 0: eval.episodes
}
# float options: (lowest, highest, lowest allowed, highest allowed); every one must also be finite
FLOAT_BOUNDS: dict[str, tuple[float, float, bool, bool]] = {
    "prune.sparsity": (0.0, 1.0, False, False),
    "backbone.lr": (0.0, math.inf, False, False),
    "prune.lr": (0.0, math.inf, True, False),  # 0: the library default
    "adapt.aux_weight": (0.0, math.inf, True, False),  # 0: the auxiliary term off
}
EXAMPLES: dict[str, str] = {  # a valid value for the fix, where the default is not a good example
    "prune.sparsity": "0.5",
    "data.size": "32",
    "eval.ways": "5",
}
CHOICES: dict[str, tuple[str, ...]] = {"export.int8": ("auto", "yes", "no"),
                                       "adapt.objective": ("trajectory", "outcome")}
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
# These models halve the image with four 2x2 max-pools: below 16 px the last one has nothing to pool
# and torch fails mid-training (measured: 12 px fails, 16 px runs). The others run down to 1 px.
MIN_SIZE = {"resnet12": 16, "vgg11": 16, "vgg19": 16}
# Largest class index or shot count in a list; a range up to it is expanded into a Python list.
LIST_MAX = 100_000
NONEMPTY = ("output", "device", "data.base", "data.novel", "backbone.model", "prune.method",
            "prune.granularity", "adapt.method", "export.target", "export.int8")


def flag(key: str) -> str:
    """``prune.sparsity`` -> ``--prune-sparsity`` (the flag ``edgeflow compile`` generates)."""
    return "--" + key.replace(".", "-").replace("_", "-")


def where(key: str) -> str:
    """How to set ``key``: its flag and, for a section's key, its TOML table and name."""
    if "." not in key:
        return f"{flag(key)} (or {key} = ... at the top of the TOML file)"
    section, name = key.split(".", 1)
    return f"{flag(key)} (or [{section}] {name} = ...)"


_TYPE_WORDS = {bool: "bool (true or false)", int: "int (a whole number)",
               float: "float (a number)", str: "str (a quoted string)"}


def typed(value: Any, typ: type, key: str) -> Any:
    """``value`` if it is exactly a ``typ`` (an int widened to float for float options), else a
    ConfigError. Nothing is converted from text: ``epochs = "3"`` or ``epochs = 2.5`` is an error
    (``bool`` is not an int either, although Python says it is)."""
    ok = (isinstance(value, bool) if typ is bool else
          isinstance(value, int) and not isinstance(value, bool) if typ is int else
          isinstance(value, (int, float)) and not isinstance(value, bool) if typ is float else
          isinstance(value, str) if typ is str else True)
    if not ok:
        got = f"{value!r} ({type(value).__name__})"
        hint = " (without quotes)" if isinstance(value, str) and typ is not str else ""
        raise ConfigError(f"{key} must be {_TYPE_WORDS.get(typ, typ.__name__)}, got {got}; write "
                          f"e.g. {_toml_example(key)}{hint}, or pass {flag(key)}")
    if typ is float and isinstance(value, int):
        try:
            return float(value)
        except OverflowError:
            raise ConfigError(f"{key} is {value}, too large for a float; set {where(key)}") from None
    return value


def _toml_example(key: str) -> str:
    """``[backbone] epochs = 12``: ``key`` with its default as a TOML line (a type error's fix)."""
    from edgeflow.pipeline.config import _toml_value

    section, _, name = key.rpartition(".")
    return f"{f'[{section}] ' if section else ''}{name} = {_toml_value(_default(key))}"


def _items(cfg: CompileConfig) -> list[tuple[str, Any, type]]:
    """(dotted key, value, declared type) of every option."""
    import typing

    out = []
    hints = typing.get_type_hints(type(cfg))
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if is_dataclass(f.default):
            section_hints = typing.get_type_hints(type(value))
            out += [(f"{f.name}.{g.name}", getattr(value, g.name), section_hints[g.name])
                    for g in fields(value)]
        else:
            out.append((f.name, value, hints[f.name]))
    return out


def _check_bounds(key: str, value: Any, default: Any) -> None:
    example = EXAMPLES.get(key, str(default))
    if key in INT_BOUNDS:
        lo, hi = INT_BOUNDS[key]
        if not lo <= value <= hi:
            raise ConfigError(f"{key} must be an integer from {lo} to {hi}, got {value}; set "
                              f"{where(key)}, e.g. {flag(key)} {example}")
    if key in FLOAT_BOUNDS:
        lo, hi, lo_in, hi_in = FLOAT_BOUNDS[key]
        inside = (math.isfinite(value) and (lo <= value if lo_in else lo < value)
                  and (value <= hi if hi_in else value < hi))
        if not inside:
            rule = (f"a finite number above {lo:g}" if hi == math.inf else
                    f"in {'[' if lo_in else '('}{lo:g}, {hi:g}{']' if hi_in else ')'}")
            raise ConfigError(f"{key} must be {rule}, got {value}; set {where(key)}, e.g. "
                              f"{flag(key)} {example}")
    if key in CHOICES and value.lower() not in CHOICES[key]:
        raise ConfigError(f"{key} must be {', '.join(CHOICES[key][:-1])} or {CHOICES[key][-1]}, got "
                          f"{value!r}; set {where(key)}")
    if isinstance(value, str):
        if "\x00" in value:
            raise ConfigError(f"{key} contains a NUL character; set {where(key)}")
        if key in NONEMPTY and not value.strip():
            raise ConfigError(f"{key} is empty; set {where(key)}, e.g. {flag(key)} {default}")


def _int_list(cfg_value: str, key: str, *, lowest: int) -> list[int]:
    """Parse a list option and refuse what would silently mean something else."""
    from edgeflow.pipeline.config import parse_int_list

    values = parse_int_list(cfg_value, name=key, maximum=LIST_MAX)
    low = [v for v in values if v < lowest]
    if low:
        raise ConfigError(f"{key}: {low[0]} is below {lowest}; set {where(key)}")
    twice = sorted({v for v in values if values.count(v) > 1})
    if twice:
        raise ConfigError(f"{key} lists {twice} more than once; list each value once, e.g. "
                          f"{flag(key)} 1,5")
    return values


def _same_data(a: str, b: str) -> bool:
    """Whether two data options name the same dataset (a built-in name, or one path two ways)."""
    if a == b:
        return True
    try:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop or an odd path: not provably one
        return False


def _check_data(cfg: CompileConfig) -> None:
    d = cfg.data
    base = _int_list(d.base_classes, "data.base_classes", lowest=0)
    novel = _int_list(d.novel_classes, "data.novel_classes", lowest=0)
    if _same_data(d.base, d.novel):
        # one dataset for both: empty means all classes, so the backbone would train on the very
        # classes the few-shot numbers are measured on, and the run would still exit 0
        if not base or not novel:
            empty = "data.base_classes" if not base else "data.novel_classes"
            raise ConfigError(f"{empty} is empty (all classes) but data.base and data.novel are the "
                              f"same dataset ({d.base!r}), so base and novel classes would overlap; "
                              "give both, disjoint, e.g. --data-base-classes 0-4 "
                              "--data-novel-classes 5-9")
        common = sorted(set(base) & set(novel))
        if common:
            raise ConfigError(f"data.base_classes and data.novel_classes overlap in {common} of the "
                              f"same dataset ({d.base!r}); novel classes must be unseen in training: "
                              "make them disjoint, e.g. --data-base-classes 0-4 "
                              "--data-novel-classes 5-9")
    if d.val and _same_data(d.val, d.novel):
        raise ConfigError(f"data.val is the novel data ({d.novel!r}): hyper-parameters would be "
                          "chosen on the evaluation classes; give other data to --data-val, or "
                          "leave it empty (part of base)")
    if novel and cfg.eval.ways > len(novel):
        raise ConfigError(f"eval.ways is {cfg.eval.ways} but data.novel_classes lists only "
                          f"{len(novel)} classes; lower --eval-ways or add novel classes")
    need = MIN_SIZE.get(cfg.backbone.model, 1)
    if d.size < need:
        raise ConfigError(f"data.size is {d.size} but {cfg.backbone.model} needs at least {need} "
                          f"pixels (four 2x2 max-pools); set --data-size {need} or more")


def _check_output(output: str) -> None:
    """``output`` must be a folder or creatable as one: not an existing file or device, nor under
    one, and its nearest existing folder writable."""
    try:
        _check_folder(output, Path(output).expanduser())
    except OSError as exc:  # a name too long, a loop of links: the OS says why
        raise ConfigError(f"output {output[:80]!r}: {exc.strerror or exc}; set --output (or output "
                          "= ...) to a usable folder path") from None


def _check_folder(output: str, path: Path) -> None:
    """The nearest existing one of ``path`` and its parents must be a folder this user can write."""
    for p in (path, *path.parents):
        if p.exists() or p.is_symlink():
            if not p.is_dir():
                what = "is" if p == path else f"is under {p}, which is"
                raise ConfigError(f"output {output!r} {what} an existing file or device, not a "
                                  "folder; set --output (or output = ...) to a folder path")
            if not os.access(p, os.W_OK | os.X_OK):
                raise ConfigError(f"output {output!r}: cannot create or write in {p} (permission "
                                  "denied); set --output to a folder you can write")
            return


def check(cfg: CompileConfig) -> None:
    """Every option's type, range and the rules between options; the first problem is raised."""
    for key, value, typ in _items(cfg):
        typed(value, typ, key)
        _check_bounds(key, value, _default(key))
    _int_list(cfg.eval.shots, "eval.shots", lowest=1)
    if not cfg.eval.shots.strip():
        raise ConfigError("eval.shots is empty; set --eval-shots (or [eval] shots = ...), e.g. "
                          "--eval-shots 1,5")
    if not DEVICE.fullmatch(cfg.device):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {cfg.device!r}; set "
                          f"{where('device')}")
    # your own model (package.module:build, with a colon; no import here) may come trained
    if cfg.backbone.epochs == 0 and not cfg.backbone.weights and ":" not in cfg.backbone.model:
        raise ConfigError("backbone.epochs is 0 and no backbone.weights given: nothing to start from;"
                          " pass --backbone-weights or --backbone-epochs N")
    _check_data(cfg)
    _check_output(cfg.output)


def _default(key: str) -> Any:
    """The built-in default of ``key`` (a fix's example value)."""
    from edgeflow.pipeline.config import CompileConfig

    obj: Any = CompileConfig
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj
