"""Hyperflows pruning (weight, n:m and channel granularity) and its baselines.

``prune(model, (x, y), config=PruneConfig(...))`` attaches score masks and runs the two phases;
``finalize(model)`` returns a plain, export-ready ``nn.Module``; ``save_pruned``/``load_pruned``
round-trip it with the metadata later stages need.
"""

from edgeflow.prune.channel import channel_plan, count_macs, shrink_channels
from edgeflow.prune.config import CHANNEL_GROUPS, GRANULARITIES, METHODS, PruneConfig, parse_granularity
from edgeflow.prune.depgraph import DepGroup, DepPlan, depgraph_plan
from edgeflow.prune.finalize import finalize, load_pruned, save_pruned, sparsity_report
from edgeflow.prune.hyperflows import PruneResult, pressure_sweep, prune
from edgeflow.prune.pressure import (
    PressureController,
    fit_power_law,
    gamma_for_density,
    solve_trajectory,
)
from edgeflow.prune.scored import MaskSet, StraightThrough, attach_scores, nm_keep, nm_pattern_ok

__all__ = [
    "CHANNEL_GROUPS",
    "GRANULARITIES",
    "METHODS",
    "DepGroup",
    "DepPlan",
    "MaskSet",
    "PressureController",
    "PruneConfig",
    "PruneResult",
    "StraightThrough",
    "attach_scores",
    "channel_plan",
    "count_macs",
    "depgraph_plan",
    "finalize",
    "fit_power_law",
    "gamma_for_density",
    "load_pruned",
    "nm_keep",
    "nm_pattern_ok",
    "parse_granularity",
    "pressure_sweep",
    "prune",
    "save_pruned",
    "shrink_channels",
    "solve_trajectory",
    "sparsity_report",
]
