"""The compile stage that meta-trains the HyperFlow drift network for the (pruned) backbone."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeflow.pipeline.config import CompileConfig
from edgeflow.pipeline.model_stages import CompileData

if TYPE_CHECKING:
    from edgeflow.adapt.meta_train import MetaTrainConfig
    from edgeflow.adapt.outcome import OutcomeConfig
    from edgeflow.adapt.trajectories import TrajectoryConfig


def outcome_config(cfg: CompileConfig) -> OutcomeConfig:
    """The outcome meta-training the ``[adapt]`` section resolves to."""
    from edgeflow.adapt.outcome import OutcomeConfig

    a = cfg.adapt
    return OutcomeConfig(steps=a.outcome_steps, euler_steps=a.euler_steps,
                         loop_every=a.loop_every, eval_every=max(1, a.outcome_steps // 6),
                         aux_weight=a.aux_weight, use_stats=a.stats,
                         shot_tokens=a.shot_tokens, seed=cfg.seed,
                         device=cfg.device)


def adapt_configs(cfg: CompileConfig) -> tuple[TrajectoryConfig, MetaTrainConfig]:
    """The trajectory and meta-training configurations the compile's ``[adapt]`` section resolves to
    (the library's defaults fill the rest)."""
    from edgeflow.adapt.meta_train import MetaTrainConfig
    from edgeflow.adapt.trajectories import TrajectoryConfig

    a = cfg.adapt
    traj = TrajectoryConfig(tasks=a.tasks, starts=a.starts, seed=cfg.seed,
                            chunk=max(1, min(25, a.tasks)))
    train = MetaTrainConfig(steps=a.meta_steps, seed=cfg.seed, eval_every=max(1, a.meta_steps // 8),
                            device=cfg.device)
    return traj, train


def meta_train_drift(cfg: CompileConfig, data: CompileData, backbone_ckpt: Path, out: Path, *,
                     progress: bool) -> dict[str, Any]:
    """Teacher recipe on val tasks -> trajectories on base tasks -> drift regression -> drift.pt.

    The same function as ``edgeflow meta-train`` (:func:`edgeflow.adapt.workflow.meta_train_backbone`)
    on the compile's in-memory datasets (class subsets of one archive are possible here).
    """
    from edgeflow.adapt.workflow import meta_train_backbone
    from edgeflow.checkpoint import load_checkpoint
    from edgeflow.prune.finalize import load_pruned

    a = cfg.adapt
    net = load_pruned(backbone_ckpt)  # any EdgeFlow checkpoint: pruned, recovered or dense
    _, meta = load_checkpoint(backbone_ckpt)
    traj, train = adapt_configs(cfg)
    res = meta_train_backbone(net, meta, base=data.train, val=data.val, pre=data.preprocess,
                              output=out / "drift.pt", trajectories=out / "trajectories",
                              theta_size=a.theta_max, traj_config=traj, train_config=train,
                              val_count=a.val_tasks, val_seed=cfg.seed + 1, method=a.method,
                              steps=a.steps, progress=progress, objective=a.objective,
                              outcome_config=outcome_config(cfg),
                              selection_tasks=a.selection_tasks)
    keep = ("theta_size", "theta_layers", "teacher", "teacher_selection", "integrator",
            "val_acc_no_adaptation", "trajectory_rows", "mean_stop_step", "fraction_stopped_at_0",
            "best_step")
    return {"drift": "drift.pt", **{k: res[k] for k in keep},
            "val_acc_by_euler_steps": {str(k): v for k, v in res["val_acc_by_euler_steps"].items()},
            "val_acc_by_recenter": res["val_acc_by_recenter"],
            "meta_train_seconds": res["seconds"]["meta_train"],
            "offline_seconds": res["seconds"], "objective": res["objective"],
            **({"outcome": {k: v for k, v in res["outcome"].items() if k != "history"}}
               if "outcome" in res else {})}
