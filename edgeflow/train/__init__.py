"""Supervised training shared by every stage (backbone training, pruning, recovery fine-tunes)."""

from edgeflow.train.loop import (
    History,
    TrainConfig,
    batches,
    evaluate,
    fit,
    make_optimizer,
    resolve_device,
    to_tensor,
)

__all__ = ["History", "TrainConfig", "batches", "evaluate", "fit", "make_optimizer",
           "resolve_device", "to_tensor"]
