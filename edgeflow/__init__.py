"""EdgeFlow: prune vision backbones with Hyperflows and adapt them on the device with HyperFlow.

Importing ``edgeflow`` is cheap and torch-free, so that ``edgeflow.runtime`` (the on-device side)
never loads torch. Heavy entry points are imported lazily.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "compile"]


def compile(config=None, /, *, model=None, head=None, weights=None, **overrides):
    """Run the whole pipeline; ``config`` is a TOML path or None (defaults), ``overrides`` use
    dotted keys with ``__`` (``prune__sparsity=0.7``) or plain top-level names (``output=...``).

    ``model`` is a model name, ``"package.module:build"``, or a ``torch.nn.Module`` instance (your
    own model; EdgeFlow trains a copy); ``head`` and ``weights`` are ``backbone.head`` and
    ``backbone.weights``. A run from an instance cannot be resumed from the command line (the
    saved configuration names an object of this process); an importable builder can.

    Example::

        edgeflow.compile(model=MyNet(), head="fc", prune__granularity="weight", output="runs/my")

    Returns a ``CompileResult`` (bundle path, report path, metrics). Imports torch on call only.
    """
    from edgeflow.pipeline.compile import run_compile
    from edgeflow.pipeline.config import build_config

    overrides = {k.replace("__", "."): v for k, v in overrides.items()}
    if model is not None:
        if not isinstance(model, str):
            from edgeflow.models import register_object

            model = register_object(model)
        overrides["backbone.model"] = model
    for key, value in (("backbone.head", head), ("backbone.weights", weights)):
        if value is not None:
            overrides[key] = str(value)
    cfg = build_config(file=config, overrides=overrides)
    return run_compile(cfg, progress=False, log=lambda m: None)
