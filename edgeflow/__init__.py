"""EdgeFlow: prune vision backbones with Hyperflows and adapt them on the device with HyperFlow.

Importing ``edgeflow`` is cheap and torch-free, so that ``edgeflow.runtime`` (the on-device side)
never loads torch. Heavy entry points are imported lazily.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
