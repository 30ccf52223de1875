"""Query accuracy of a drift's adaptation on many cached tasks, in one process or shared across
torchrun ranks (what outcome meta-training selects on and the benchmarks pair methods with)."""

from __future__ import annotations

import torch

from edgeflow.adapt.apply import IntegratorSettings
from edgeflow.adapt.drift import DriftNet
from edgeflow.adapt.loop import drift_theta
from edgeflow.adapt.split import SplitFeatures, TaskCache


def per_task_accuracy(drift: DriftNet | None, split: SplitFeatures, tasks: list[TaskCache],
                      theta0: torch.Tensor, *, settings: IntegratorSettings,
                      metric: str = "cosine") -> list[float]:
    """Query accuracy of every task after adaptation with ``settings`` (no gradients)."""
    from edgeflow.adapt.meta_train import task_accuracy

    with torch.no_grad():
        return [task_accuracy(split, t, drift_theta(split, drift, t.support_only, t.support_y,
                                                    t.ways, theta0, settings=settings),
                              metric=metric) for t in tasks]


def shared_accuracy(drift: DriftNet | None, split: SplitFeatures, tasks: list[TaskCache],
                    theta0: torch.Tensor, *, settings: IntegratorSettings, metric: str = "cosine",
                    device: torch.device | str = "cpu") -> list[float]:
    """:func:`per_task_accuracy` of every task, each rank scoring only its :func:`shard
    <edgeflow.distributed.shard>` of them: every rank gets the same list, bit for bit the single
    process's, so decisions taken from it agree everywhere. ``device``: where the all-reduce runs
    (the process group's device: CUDA under nccl)."""
    from edgeflow import distributed

    mine = distributed.shard(len(tasks))
    accs = per_task_accuracy(drift, split, [tasks[i] for i in mine], theta0, settings=settings,
                             metric=metric)
    return distributed.shard_values(accs, len(tasks), torch.device(device))
