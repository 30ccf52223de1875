"""Device targets: what a device runs fast and how much of it a model may take.

A :class:`Target` is a frozen dataclass loaded from a TOML profile. The built-in profiles live in the
repository's top-level ``targets/`` folder (the source of truth); a wheel carries the same files as
the package ``edgeflow._targets`` (see ``pyproject.toml``), so they are found after a non-editable
install too. A user passes a path to their own profile anywhere a target name is accepted::

    Target.load("jetson-orin-nano-8gb")
    Target.load("./my-board.toml")

Every key of :data:`FIELDS` is required and no other key is accepted: a typo in a profile is an
error naming the key, never a silently ignored setting.
"""

from __future__ import annotations

import re
import sys
from dataclasses import asdict, dataclass, fields
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from edgeflow.errors import ConfigError, unknown_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

BACKENDS = ("onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")

# JetPack release -> TensorRT major.minor it ships (docs/tensorrt.md). A Jetson profile's
# trt_versions must cover the TensorRT of every JetPack it lists.
JETPACK_TRT: dict[str, str] = {"5.1": "8.5", "6.0": "8.6", "6.1": "10.3", "6.2": "10.3", "7.2": "10.13"}

# Sparse tensor cores (2:4) exist from Ampere (SM 8.0) on; DLA only on Jetson Xavier/Orin modules.
SPARSE_MIN_SM = (8, 0)

# Key -> (python type, help). The order is the order `targets show` prints.
FIELDS: dict[str, tuple[type, str]] = {
    "name": (str, "profile name"),
    "description": (str, "one line for humans"),
    "backend": (str, "preferred backend: onnxruntime or tensorrt"),
    "gpu_sm": (str, "GPU compute capability 'major.minor', or 'none' without a GPU"),
    "jetpack": (list, "JetPack releases the device runs (empty if not a Jetson)"),
    "trt_versions": (list, "TensorRT major.minor versions supported (empty without TensorRT)"),
    "precisions": (list, "precisions the device runs: fp32, fp16, int8"),
    "sparse_2_4": (bool, "has sparse tensor cores (2:4 structured sparsity)"),
    "dla_cores": (int, "number of DLA cores (0 if none)"),
    "memory_budget_mb": (int, "memory the model may take: weights + activations + drift + workspace"),
    "workspace_mb": (int, "TensorRT builder workspace (tactic memory pool)"),
    "batch_min": (int, "smallest batch of the optimisation profile"),
    "batch_opt": (int, "batch the engine is tuned for"),
    "batch_max": (int, "largest batch; memory is planned for it"),
}

_VERSION = re.compile(r"^\d+\.\d+$")
_MAJOR = re.compile(r"^\d+$")


@dataclass(frozen=True)
class Target:
    """A device profile. Build one with :meth:`load` (or :meth:`from_dict` for a parsed table)."""

    name: str
    description: str
    backend: str
    gpu_sm: str | None
    jetpack: tuple[str, ...]
    trt_versions: tuple[str, ...]
    precisions: tuple[str, ...]
    sparse_2_4: bool
    dla_cores: int
    memory_budget_mb: int
    workspace_mb: int
    batch_min: int
    batch_opt: int
    batch_max: int
    source: str = ""  # where the profile came from (file path); not a TOML key

    # ----------------------------------------------------------------------------- construction
    @classmethod
    def load(cls, name_or_path: str | Path) -> Target:
        """A built-in profile by name, or a TOML file by path.

        Example: ``Target.load("jetson-orin-nano-8gb").sparse_2_4`` -> ``True``.
        """
        spec = str(name_or_path)
        looks_like_path = spec.endswith(".toml") or "/" in spec or "\\" in spec or Path(spec).is_file()
        if looks_like_path:
            path = Path(spec).expanduser()
            if not path.is_file():
                raise ConfigError(f"target profile {path} does not exist; give a built-in name "
                                  f"({', '.join(target_names())}) or the path of a .toml profile")
            return cls.from_toml(path.read_text(encoding="utf-8"), source=str(path))
        registry = builtin_targets()
        if spec not in registry:
            raise unknown_name("target", spec, list(registry))
        return cls.from_toml(registry[spec].read_text(encoding="utf-8"), source=str(registry[spec]))

    @classmethod
    def from_toml(cls, text: str, *, source: str = "<string>") -> Target:
        """Parse and validate the text of a TOML profile; ``source`` names it in errors."""
        try:
            table = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"target profile {source} is not valid TOML: {exc}") from exc
        return cls.from_dict(table, source=source)

    @classmethod
    def from_dict(cls, table: dict[str, Any], *, source: str = "<dict>") -> Target:
        """Validate a parsed profile: exact key set, types, and consistency between fields."""
        unknown = sorted(set(table) - set(FIELDS))
        missing = [k for k in FIELDS if k not in table]
        if unknown or missing:
            parts = []
            if unknown:
                parts.append(f"unknown keys {unknown}")
            if missing:
                parts.append(f"missing keys {missing}")
            raise ConfigError(f"target profile {source}: {'; '.join(parts)}; a profile has exactly "
                              f"these keys: {', '.join(FIELDS)} (see targets/cpu.toml)")
        for key, (typ, help_) in FIELDS.items():
            value = table[key]
            # bool is a subclass of int: `dla_cores = true` must not pass as 1.
            ok = isinstance(value, typ) and not (typ is int and isinstance(value, bool))
            if ok and typ is list:
                ok = all(isinstance(v, str) for v in value)
            if not ok:
                want = "list of strings" if typ is list else typ.__name__
                raise ConfigError(f"target profile {source}: {key} = {value!r} must be a {want} "
                                  f"({help_})")
        gpu_sm = None if table["gpu_sm"].lower() == "none" else table["gpu_sm"]
        target = cls(
            name=table["name"], description=table["description"], backend=table["backend"],
            gpu_sm=gpu_sm, jetpack=tuple(table["jetpack"]), trt_versions=tuple(table["trt_versions"]),
            precisions=tuple(table["precisions"]), sparse_2_4=table["sparse_2_4"],
            dla_cores=table["dla_cores"], memory_budget_mb=table["memory_budget_mb"],
            workspace_mb=table["workspace_mb"], batch_min=table["batch_min"],
            batch_opt=table["batch_opt"], batch_max=table["batch_max"], source=source)
        problems = target._problems()
        if problems:
            raise ConfigError(f"target profile {source}: " + "; ".join(problems))
        return target

    def _problems(self) -> list[str]:
        """Every inconsistency, each with what to change."""
        p: list[str] = []
        if self.backend not in BACKENDS:
            p.append(f"backend {self.backend!r} is not one of {', '.join(BACKENDS)}")
        bad = [x for x in self.precisions if x not in PRECISIONS]
        if bad or not self.precisions:
            p.append(f"precisions {list(self.precisions)} must be a non-empty subset of {list(PRECISIONS)}")
        if self.gpu_sm is not None and not _VERSION.match(self.gpu_sm):
            p.append(f"gpu_sm {self.gpu_sm!r} must look like '8.7' (or 'none' without a GPU)")
        for v in self.trt_versions:
            if not (_VERSION.match(v) or _MAJOR.match(v)):
                p.append(f"trt_versions entry {v!r} must be 'major.minor' like '10.3', or a major "
                         "like '10' for every 10.x")
            elif not _buildable(v):
                p.append(f"trt_versions entry {v!r}: EdgeFlow builds with TensorRT 8.5, 8.6 and 10.x")
        if self.backend == "tensorrt":
            if self.gpu_sm is None:
                p.append("backend 'tensorrt' needs a GPU: set gpu_sm, or use backend 'onnxruntime'")
            if not self.trt_versions:
                p.append("backend 'tensorrt' needs at least one entry in trt_versions")
        for jp in self.jetpack:
            if jp not in JETPACK_TRT:
                p.append(f"jetpack {jp!r} is unknown; known releases: {', '.join(JETPACK_TRT)}")
            elif JETPACK_TRT[jp] not in self.trt_versions:
                p.append(f"jetpack {jp} ships TensorRT {JETPACK_TRT[jp]}, which trt_versions lacks")
        if self.sparse_2_4 and (self.sm_tuple is None or self.sm_tuple < SPARSE_MIN_SM):
            p.append(f"sparse_2_4 = true needs sparse tensor cores (SM >= 8.0), but gpu_sm is "
                     f"{self.gpu_sm}; set sparse_2_4 = false")
        if self.dla_cores < 0:
            p.append("dla_cores must be >= 0")
        if self.dla_cores > 0 and (self.backend != "tensorrt" or not self.jetpack):
            p.append("dla_cores > 0 only exists on Jetson modules with backend 'tensorrt'")
        if self.memory_budget_mb <= 0:
            p.append("memory_budget_mb must be > 0")
        if not 0 <= self.workspace_mb < self.memory_budget_mb:
            p.append(f"workspace_mb {self.workspace_mb} must be >= 0 and below memory_budget_mb "
                     f"{self.memory_budget_mb} (the budget includes the workspace)")
        if not 1 <= self.batch_min <= self.batch_opt <= self.batch_max:
            p.append(f"batch sizes need 1 <= batch_min <= batch_opt <= batch_max, got "
                     f"{self.batch_min}/{self.batch_opt}/{self.batch_max}")
        return p

    # ----------------------------------------------------------------------------- queries
    @property
    def sm_tuple(self) -> tuple[int, int] | None:
        """``gpu_sm`` as (major, minor) for comparisons, or None without a GPU."""
        if self.gpu_sm is None or not _VERSION.match(self.gpu_sm):
            return None
        major, minor = self.gpu_sm.split(".")
        return int(major), int(minor)

    @property
    def has_gpu(self) -> bool:
        return self.gpu_sm is not None

    def supports(self, precision: str) -> bool:
        """Whether the device runs ``precision`` (fp32, fp16, int8)."""
        return precision in self.precisions

    def pick_precision(self, available: list[str] | tuple[str, ...] | dict) -> str:
        """The fastest precision that both the bundle carries and the device runs.

        Order: int8, fp16, fp32 (a bundle only carries INT8 after calibration passed its check).
        Example: ``Target.load("cpu").pick_precision({"fp32": ..., "int8": ...})`` -> ``"int8"``.
        """
        for p in ("int8", "fp16", "fp32"):
            if p in available and p in self.precisions:
                return p
        raise ConfigError(f"target {self.name} runs {', '.join(self.precisions)} but the bundle "
                          f"carries {', '.join(available) or 'nothing'}; export an fp32 bundle")

    def supports_trt(self, version: str) -> bool:
        """Whether TensorRT ``version`` ('10.3' or '10.3.0.30') is one this target lists, exactly
        ('10.3') or by its major ('10': any 10.x, for desktops whose TensorRT is pip's)."""
        parts = version.split(".")
        return ".".join(parts[:2]) in self.trt_versions or parts[0] in self.trt_versions

    def to_dict(self) -> dict[str, Any]:
        """The profile as TOML keys (plus ``source``); lists, not tuples, for JSON."""
        d = asdict(self)
        d["gpu_sm"] = self.gpu_sm or "none"
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


# --------------------------------------------------------------------------------- registry
def _buildable(version: str) -> bool:
    """A TensorRT EdgeFlow builds engines with: 8.5, 8.6, 10.x (and 11, whose notes it reports)."""
    parts = tuple(int(x) for x in version.split("."))
    return parts[0] in (10, 11) or (parts[0] == 8 and len(parts) > 1 and parts[1] >= 5)


def _source_dir() -> Path | None:
    """The repository's ``targets/`` folder when running from a source checkout."""
    here = Path(__file__).resolve().parent.parent / "targets"
    return here if here.is_dir() and any(here.glob("*.toml")) else None


def builtin_targets() -> dict[str, Traversable]:
    """Built-in profile name -> file: the source tree's ``targets/`` first, else the installed copy.

    The registry is the folder's content, so adding a profile is adding a file.
    """
    folder: Traversable | None = _source_dir()
    if folder is None:
        try:
            folder = resources.files("edgeflow._targets")
        except ModuleNotFoundError:
            folder = None
    if folder is None:
        raise ConfigError("no built-in target profiles found (neither targets/ beside the package "
                          "nor the installed edgeflow._targets); reinstall edgeflow or pass the "
                          "path of a .toml profile")
    return {f.name.removesuffix(".toml"): f for f in sorted(folder.iterdir(), key=lambda f: f.name)
            if f.name.endswith(".toml")}


def target_names() -> list[str]:
    """Names of the built-in profiles, sorted."""
    return sorted(builtin_targets())


def field_help() -> dict[str, str]:
    """TOML key -> what it means (for ``targets show`` and the docs)."""
    return {k: h for k, (_, h) in FIELDS.items()}


assert [f.name for f in fields(Target)][: len(FIELDS)] == list(FIELDS), "FIELDS and Target differ"
