"""Errors EdgeFlow raises on bad input or an unusable environment.

Every message names the problem *and* what to do next; the CLI prints the message as one line and
exits 1 (a traceback only with ``--debug``). This module imports nothing heavy: the on-device runtime
uses it too.
"""

from __future__ import annotations


class EdgeflowError(Exception):
    """Base class: a problem the user can fix. The message says how."""


class DataError(EdgeflowError):
    """A dataset path, archive or image that cannot be used."""


class ConfigError(EdgeflowError):
    """An option, a name or a configuration value that is not valid."""


class CheckpointError(EdgeflowError):
    """A checkpoint or weights file that cannot be loaded into the requested model."""


class BundleError(EdgeflowError):
    """A bundle that is missing, incomplete, tampered with or of an unknown schema."""


class BackendError(EdgeflowError):
    """An inference backend (ONNX Runtime, TensorRT) that is absent or failed."""


def unknown_name(kind: str, name: str, valid: list[str] | tuple[str, ...]) -> ConfigError:
    """The error for a name missing from a registry, listing the valid names."""
    return ConfigError(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(sorted(valid))}")
