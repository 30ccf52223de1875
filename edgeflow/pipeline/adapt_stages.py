"""The compile stage that meta-trains the HyperFlow drift network for the (pruned) backbone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeflow.pipeline.config import CompileConfig
from edgeflow.pipeline.model_stages import CompileData


def meta_train_drift(cfg: CompileConfig, data: CompileData, backbone_ckpt: Path, out: Path, *,
                     progress: bool) -> dict[str, Any]:
    """Teacher recipe on val tasks -> trajectories on base tasks -> drift regression -> drift.pt.

    Same steps as ``edgeflow meta-train`` (edgeflow.adapt.workflow), on the compile's datasets
    (class subsets of one archive are possible here, unlike with paths).
    """
    from edgeflow.adapt.apply import IntegratorSettings
    from edgeflow.adapt.io import save_drift
    from edgeflow.adapt.meta_train import MetaTrainConfig, meta_train
    from edgeflow.adapt.split import SplitFeatures
    from edgeflow.adapt.theta import ThetaSpec
    from edgeflow.adapt.trajectories import (
        TrajectoryConfig,
        generate_trajectories,
        load_trajectories,
    )
    from edgeflow.adapt.workflow import choose_teacher, val_tasks
    from edgeflow.checkpoint import load_checkpoint
    from edgeflow.prune.finalize import load_pruned

    a = cfg.adapt
    net = load_pruned(backbone_ckpt)  # any EdgeFlow checkpoint: pruned, recovered or dense
    _, meta = load_checkpoint(backbone_ckpt)
    spec = ThetaSpec.from_model(net, max_size=a.theta_max)
    split = SplitFeatures(net, spec)
    theta0 = spec.get(net)
    vt = val_tasks(split, data.val, data.preprocess, count=a.val_tasks, seed=cfg.seed + 1)
    teacher, teacher_report = choose_teacher(split, [t for t in vt if not t.shift], theta0)
    traj = TrajectoryConfig(tasks=a.tasks, starts=a.starts, seed=cfg.seed,
                            chunk=max(1, min(25, a.tasks)))
    generate_trajectories(net, spec, data.train, data.preprocess, out / "trajectories", config=traj,
                          progress=progress)
    trajectories = load_trajectories(out / "trajectories")
    drift, report = meta_train(trajectories, vt, split, theta0,
                               config=MetaTrainConfig(steps=a.meta_steps, seed=cfg.seed,
                                                      eval_every=max(1, a.meta_steps // 8)),
                               progress=progress)
    chosen = IntegratorSettings(**report["integrator"])
    settings = IntegratorSettings(method=a.method, steps=a.steps or chosen.steps)
    save_drift(out / "drift.pt", drift=drift, spec=spec, theta0=theta0, settings=settings,
               metric="cosine", backbone_meta=meta, teacher=teacher.to_dict(), model=meta["model"])
    stops = trajectories.stop.float()
    return {"drift": "drift.pt", "theta_size": spec.size, "theta_layers": list(spec.names),
            "teacher": teacher.to_dict(), "teacher_selection": teacher_report,
            "integrator": settings.to_dict(),
            "val_acc_no_adaptation": report["val_acc_no_adaptation"],
            "val_acc_by_euler_steps": {str(k): v for k, v in report["val_acc_by_euler_steps"].items()},
            "trajectory_rows": len(trajectories), "mean_stop_step": float(stops.mean()),
            "fraction_stopped_at_0": float((stops == 0).float().mean()),
            "meta_train_seconds": report["seconds"]}
