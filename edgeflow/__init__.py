"""EdgeFlow: prune vision backbones with Hyperflows and adapt them on the device with HyperFlow.

Importing ``edgeflow`` is cheap and torch-free, so that ``edgeflow.runtime`` (the on-device side)
never loads torch. Heavy entry points are imported lazily.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "compile"]


def compile(config=None, /, **overrides):
    """Run the whole pipeline; ``config`` is a TOML path or None (defaults), ``overrides`` use
    dotted keys with ``__`` (``prune__sparsity=0.7``) or plain top-level names (``output=...``).

    Returns a ``CompileResult`` (bundle path, report path, metrics). Imports torch on call only.
    """
    from edgeflow.pipeline.compile import run_compile
    from edgeflow.pipeline.config import build_config

    cfg = build_config(file=config, overrides={k.replace("__", "."): v for k, v in overrides.items()})
    return run_compile(cfg, progress=False, log=lambda m: None)
