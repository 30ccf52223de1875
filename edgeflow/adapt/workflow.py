"""``meta-train`` and ``evaluate`` as functions (the CLI and the benchmark are thin shells on these).

meta-train: backbone checkpoint -> teacher recipe chosen on val episodes -> trajectories on base
tasks (with domain shifts, stopped where each task's query accuracy peaks) -> drift regression with
early stopping on val episodes -> Euler step count chosen on val -> drift checkpoint (whose meta
carries the backbone meta, theta layout, integrator, metric and the val-chosen teacher recipe).
"""

from __future__ import annotations

import time
from collections.abc import Container
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeflow.adapt.apply import IntegratorSettings
from edgeflow.adapt.drift import DriftNet
from edgeflow.adapt.evaluate import EvalConfig, evaluate_adaptation, select_classes
from edgeflow.adapt.io import load_drift, save_drift
from edgeflow.adapt.meta_train import MetaTrainConfig, meta_train
from edgeflow.adapt.outcome import OBJECTIVES, STATS_TASKS, OutcomeConfig
from edgeflow.adapt.recenter import best_alone
from edgeflow.adapt.split import SplitFeatures, TaskCache
from edgeflow.adapt.tasks import draw_task, sample_shift
from edgeflow.adapt.teacher import TeacherConfig, finetune
from edgeflow.adapt.theta import ThetaSpec
from edgeflow.adapt.trajectories import (
    Trajectories,
    TrajectoryConfig,
    generate_trajectories,
    load_trajectories,
)
from edgeflow.checkpoint import load_checkpoint
from edgeflow.data import EpisodeSampler, ImageDataset, Preprocess, load_dataset
from edgeflow.errors import ConfigError, unknown_name
from edgeflow.models import Backbone, check_model_name, create_model
from edgeflow.workflows import preprocess_for


def load_backbone(model: str, weights: Path) -> tuple[Backbone, dict, Preprocess]:
    """(model in eval mode, checkpoint meta, preprocessing) of a trained backbone checkpoint."""
    check_model_name(model)
    sd, meta = load_checkpoint(weights)
    if meta.get("model") not in (None, model):
        raise ConfigError(f"{weights} holds a {meta['model']}, not a {model}; pass --model "
                          f"{meta['model']}")
    if meta.get("prune", {}).get("channels"):  # channel-pruned: a narrower model than create_model's
        from edgeflow.prune.finalize import load_pruned

        net = load_pruned(weights)
        return net, meta, preprocess_for(net, meta, None)
    head = next((v for k, v in sd.items() if k.split(".")[0] in ("linear", "classifier")
                 and k.endswith("weight")), None)
    num_classes = int(head.shape[0]) if head is not None else int(meta.get("num_classes", 10))
    net = create_model(model, num_classes=num_classes, weights=weights,
                       **meta.get("model_kwargs", {}))
    return net.eval(), meta, preprocess_for(net, meta, None)


@dataclass(frozen=True)
class TaskStub:
    """A val task's description without its prefix caches (another rank scores it)."""

    ways: int
    shots: int
    shift: tuple[str, ...]
    kind: str


def val_tasks(split: SplitFeatures, ds: ImageDataset, pre: Preprocess, *, count: int,
              shots: tuple[int, ...] = (1, 5), ways: int = 5, queries: int = 15,
              shifted_fraction: float = 0.5, instance_fraction: float = 0.3,
              seed: int = 1, build: Container[int] | None = None) -> list[TaskCache | TaskStub]:
    """Cached val-split tasks: an ``instance_fraction`` of instance tasks, the rest class episodes;
    a ``shifted_fraction`` of either kind with a random domain shift.

    ``build``: the indices to cache (None: all); the others come back as :class:`TaskStub` (the
    same task, drawn but not run through the backbone prefix, its costly part), for a rank that
    scores only its shard."""
    samplers = {k: EpisodeSampler(ds.labels, ways=ways, shots=k, queries=queries, seed=seed)
                for k in shots}
    out = []
    for i in range(count):
        rng = np.random.default_rng([seed, i, 7])
        k = shots[i % len(shots)]
        shift = sample_shift(rng, plain_fraction=0.0) if rng.random() < shifted_fraction else ()
        task = draw_task(ds, rng, pre, episode=samplers[k].episode(i),
                         instance_fraction=instance_fraction, shift=shift, seed=[seed, i])
        if build is not None and i not in build:
            out.append(TaskStub(ways, len(task.support_y) // ways, shift, task.kind))
            continue
        out.append(TaskCache(split, task.support_x, task.support_y, task.query_x, task.query_y, ways,
                             shift=shift, kind=task.kind))
    return out


def choose_teacher(split: SplitFeatures, tasks: list[TaskCache], theta0: torch.Tensor, *,
                   lrs: tuple[float, ...] = (1e-3, 3e-3, 1e-2), max_steps: int = 40,
                   step_choices: tuple[int, ...] = (5, 10, 20, 40)) -> tuple[TeacherConfig, dict]:
    """The (lr, steps) with the best mean query accuracy on ``tasks`` (ties: fewer steps)."""
    from edgeflow import distributed

    table: dict[str, float] = {}
    mine = distributed.shard(len(tasks))  # under torchrun: this rank's share, curves summed
    for lr in lrs:
        total = torch.zeros(max_steps + 1, dtype=torch.float64)
        for i in mine:
            t = tasks[i]
            total += finetune(split, t.support, t.support_y, t.ways, theta0,
                              config=TeacherConfig(lr=lr, steps=max_steps), query=t.query,
                              query_y=t.query_y, eval_every=1).query_acc.double()
        mean = torch.tensor(distributed.all_reduce_sum(total.tolist(), torch.device("cpu"))) / len(tasks)
        for s in step_choices:
            table[f"{lr:g}@{s}"] = float(mean[s])
    best_key = max(table, key=lambda k: (round(table[k], 6), -int(k.split("@")[1])))
    lr, steps = best_key.split("@")
    return TeacherConfig(lr=float(lr), steps=int(steps)), {"val_acc": table, "chosen": best_key,
                                                          "no_adaptation": float(mean[0])}


def trajectory_gains(data: Trajectories) -> dict[str, dict[str, float]]:
    """Mean query-accuracy gain of the teacher trajectories over their start, at the stopping step
    (optimistic: the step is chosen on those queries) and at the last step, per task kind."""
    rows = torch.arange(len(data))
    at_stop = data.query_acc[rows, data.stop] - data.query_acc[:, 0]
    at_last = data.query_acc[:, -1] - data.query_acc[:, 0]
    kind = [data.kind[r] for r in data.task_row.tolist()]
    out = {}
    for name in ("all", "class", "instance"):
        m = torch.tensor([name in ("all", k) for k in kind], dtype=torch.bool)
        if m.any():
            out[name] = {"rows": int(m.sum()), "at_stop": float(at_stop[m].mean()),
                         "at_last": float(at_last[m].mean())}
    return out


def meta_train_backbone(net: Backbone, meta: dict, *, base: ImageDataset, val: ImageDataset,
                        pre: Preprocess, output: Path, trajectories: Path, theta_size: int = 128,
                        traj_config: TrajectoryConfig | None = None,
                        train_config: MetaTrainConfig | None = None, val_count: int = 60,
                        val_seed: int = 1, teacher_lrs: tuple[float, ...] = (1e-3, 3e-3, 1e-2),
                        teacher_steps: tuple[int, ...] = (5, 10, 20, 40), method: str = "euler",
                        steps: int = 0, progress: bool = False,
                        extra_meta: dict | None = None, objective: str = "trajectory",
                        outcome_config: OutcomeConfig | None = None,
                        selection_tasks: int = 1000) -> dict[str, Any]:
    """The whole offline stage on loaded data: teacher recipe on ``val`` tasks -> trajectories on
    ``base`` tasks -> drift regression -> ``output`` (rank 0 writes it). Returns a JSON-able report.

    ``objective="outcome"`` then trains the regressed drift further on the query loss after
    adaptation (:mod:`edgeflow.adapt.outcome`), keeping the weights that score best on
    ``selection_tasks`` fresh val tasks; the report compares it, on those same tasks, with no
    adaptation and with the regressed drift, with the paired 95% interval of each difference.

    ``method``/``steps`` set the device integrator (``steps=0``: the Euler step count chosen on val).
    Under torchrun the trajectory chunks, the validation tasks and the drift's batches are shared
    across ranks, and so are the outcome stage's tasks and its selection scoring; on CUDA
    (``train_config.device``) trajectories and regression run on the GPU.
    """
    from edgeflow import distributed
    from edgeflow.train import resolve_device

    traj_config = traj_config or TrajectoryConfig()
    train_config = train_config or MetaTrainConfig()
    # join the process group first: teacher selection and trajectories are shared across ranks
    device = distributed.device_for_rank(resolve_device(train_config.device))
    distributed.setup(device)
    spec = ThetaSpec.from_model(net, max_size=theta_size)
    split = SplitFeatures(net, spec)
    theta0 = spec.get(net)
    t0 = time.perf_counter()
    vtasks = val_tasks(split, val, pre, count=val_count, seed=val_seed)
    # the evaluation teacher's recipe: chosen on plain val episodes, as a user would tune it
    plain = [t for t in vtasks if not t.shift and t.kind == "class"]
    teacher, teacher_report = choose_teacher(split, plain, theta0,
                                             lrs=teacher_lrs, max_steps=max(teacher_steps),
                                             step_choices=teacher_steps)
    t_teacher = time.perf_counter() - t0
    t0 = time.perf_counter()
    stats: dict[str, int] = {}
    generate_trajectories(net.to(device), spec, base, pre, trajectories, config=traj_config,
                          progress=progress, extra_meta=extra_meta, stats=stats)
    net.cpu()
    t_traj = time.perf_counter() - t0
    data_t = load_trajectories(trajectories)
    drift, report = meta_train(data_t, vtasks, split, theta0, config=train_config,
                               progress=progress)
    chosen = IntegratorSettings(**report["integrator"])
    # the guard's re-centring-alone candidate: val's best strength for re-centring alone
    settings = IntegratorSettings(method=method, steps=steps or chosen.steps,
                                  recenter=chosen.recenter,
                                  guard_recenter=best_alone(report["val_acc_by_recenter"]))
    outcome_report = None
    if objective not in OBJECTIVES:
        raise unknown_name("objective", objective, OBJECTIVES)
    regressed, regressed_settings = drift, settings
    if objective == "outcome":
        drift, settings, outcome_report = _train_outcome(
            drift, settings, split, theta0, base=base, val=val, pre=pre,
            config=outcome_config or OutcomeConfig(device=train_config.device),
            count=selection_tasks, seed=val_seed + 7, progress=progress, trajectories=data_t,
            target=train_config.target)
    stops = data_t.stop.float()
    gain = trajectory_gains(data_t)
    summary = {"output": str(output), "trajectories": str(trajectories), "theta_size": spec.size,
               "theta_layers": list(spec.names), "teacher": teacher.to_dict(),
               "teacher_selection": teacher_report, "integrator": settings.to_dict(),
               "val_acc_no_adaptation": report["val_acc_no_adaptation"],
               "val_acc_hyperflow": report["val_acc_chosen"],
               # alpha -> steps -> val accuracy (steps 0: re-centring alone; alpha 0: drift alone)
               "val_acc_by_recenter": report["val_acc_by_recenter"],
               "best_step": report["best_step"],  # 0: no trained drift beat the zero drift on val
               "val_acc_by_euler_steps": report["val_acc_by_euler_steps"],
               "trajectory_rows": len(data_t), "mean_stop_step": float(stops.mean()),
               "fraction_stopped_at_0": float((stops == 0).float().mean()),
               "val_tasks": {"count": len(vtasks), "shifted": sum(bool(t.shift) for t in vtasks),
                             "instance": sum(t.kind == "instance" for t in vtasks)},
               # what the drift can learn: near 0 everywhere means nothing (check before training)
               "trajectory_gain": gain,
               "seconds": {"teacher_selection": t_teacher, "trajectories": t_traj,
                           "meta_train": report["seconds"]},
               "world_size": distributed.info().world_size,
               # tasks each rank generated in this call (chunks already on disk are not counted)
               "trajectory_tasks_by_rank": distributed.gather_to_main(stats["computed_tasks"]),
               "history": report["history"], "trajectory_config": traj_config.to_dict(),
               "meta_train_config": train_config.to_dict(), "objective": objective}
    if outcome_report is not None:
        summary["outcome"] = outcome_report
        summary["seconds"]["outcome"] = outcome_report["seconds"]
    if distributed.info().enabled:
        summary["ranks_agree"] = distributed.replicas_agree(drift)
    if distributed.info().is_main:
        if outcome_report is not None:  # the regressed drift it started from, to compare with
            save_drift(output.with_name(output.stem + ".trajectory.pt"), drift=regressed,
                       spec=spec, theta0=theta0, settings=regressed_settings, metric="cosine",
                       backbone_meta=meta, teacher=teacher.to_dict(), model=meta.get("model"),
                       report={"objective": "trajectory"})
        save_drift(output, drift=drift, spec=spec, theta0=theta0, settings=settings,
                   metric="cosine", backbone_meta=meta, teacher=teacher.to_dict(),
                   model=meta.get("model"),
                   report={k: v for k, v in summary.items() if k != "history"})
    distributed.barrier()
    return summary


def _train_outcome(drift: DriftNet, settings: IntegratorSettings, split: SplitFeatures,
                   theta0: torch.Tensor, *, base: ImageDataset, val: ImageDataset,
                   pre: Preprocess, config: OutcomeConfig, count: int, seed: int,
                   progress: bool, trajectories: Trajectories, target: str
                   ) -> tuple[DriftNet, IntegratorSettings, dict]:
    """Outcome training from the regressed ``drift`` (its re-centring alpha as the gain's start),
    selected on ``count`` fresh val tasks; returns (drift, the device's settings, report).
    ``trajectories`` (regressed with velocity ``target``) feed the auxiliary regression term."""
    from edgeflow import distributed
    from edgeflow.adapt.outcome import meta_train_outcome
    from edgeflow.adapt.scores import shared_accuracy
    from edgeflow.train import resolve_device

    t0 = time.perf_counter()
    # a rank caches only the tasks it scores (its shard) and the ones every rank reads in full
    build = set(distributed.shard(count)) | set(range(STATS_TASKS))
    sel = val_tasks(split, val, pre, count=count, seed=seed, build=build)
    t_tasks = time.perf_counter() - t0
    new, rep = meta_train_outcome(base, pre, sel, split, theta0, config=config, warm=drift,
                                  recenter_init=settings.recenter, trajectories=trajectories,
                                  target=target, progress=progress)
    # each rank scores its shard of the selection tasks; every rank gets the full lists
    dev = distributed.device_for_rank(resolve_device(config.device))
    accs = {"none": shared_accuracy(None, split, sel, theta0, device=dev,
                                    settings=replace(settings, steps=0, recenter=0.0)),
            "trajectory": shared_accuracy(drift, split, sel, theta0, settings=settings, device=dev),
            "outcome": shared_accuracy(new, split, sel, theta0, settings=config.settings,
                                       device=dev)}
    rep["selection"] = {name: {"mean": float(np.mean(a))} for name, a in accs.items()}
    for a, b in (("outcome", "none"), ("outcome", "trajectory"), ("trajectory", "none")):
        d = np.asarray(accs[a]) - np.asarray(accs[b])
        rep["selection"][f"{a} - {b}"] = {"mean": float(d.mean()),
                                          "ci95": float(1.96 * d.std(ddof=1) / np.sqrt(len(d)))}
    rep["seconds"] += t_tasks
    return new, replace(config.settings, guard_recenter=settings.guard_recenter), rep


def run_meta_train(*, model: str, weights: Path, data: str, val_data: str, output: Path,
                   trajectories: Path | None = None, limit: int | None = None,
                   progress: bool = False, **options: Any) -> dict[str, Any]:
    """``edgeflow meta-train``: load the backbone and both splits, then
    :func:`meta_train_backbone` (``options`` are its keyword arguments)."""
    net, meta, pre = load_backbone(model, weights)
    base = load_dataset(data, size=pre.size, limit=limit, progress=progress)
    val = load_dataset(val_data, size=pre.size, progress=progress)
    traj_dir = Path(trajectories) if trajectories else output.with_suffix(".trajectories")
    return meta_train_backbone(net, meta, base=base, val=val, pre=pre, output=output,
                               trajectories=traj_dir, progress=progress,
                               extra_meta={"backbone": str(weights)}, **options)


def run_evaluate(*, model: str, weights: Path, drift: Path, data: str, ways: int = 5,
                 shots: tuple[int, ...] = (1, 5), episodes: int = 600, queries: int = 15,
                 seed: int = 0, methods: tuple[str, ...] | None = None,
                 teacher: TeacherConfig | None = None, steps: int | None = None,
                 step_sweep: tuple[int, ...] = (), timing_episodes: int = 50,
                 memory_episodes: int = 3, full_episodes: int = 20,
                 classes: tuple[int, ...] = (), progress: bool = False) -> dict[str, Any]:
    """Evaluate every method on the same seeded episodes of ``data`` (only its ``classes``,
    indices into the data's sorted class list, when given)."""

    net, _, pre = load_backbone(model, weights)
    drift_net, spec, theta0, settings, dmeta = load_drift(drift)
    if spec.layout() != ThetaSpec.from_model(net, names=list(spec.names)).layout() or not \
            torch.allclose(spec.get(net), theta0):
        raise ConfigError(f"{drift} was meta-trained on another backbone than {weights}; pass the "
                          "backbone checkpoint it was trained with")
    if steps is not None:  # only the step count (and its default dt): re-centring stays as chosen
        settings = replace(settings, steps=steps, dt=None)
    teacher = teacher or TeacherConfig(**dmeta.get("teacher", {}))
    ds = select_classes(load_dataset(data, size=pre.size, progress=progress), classes,
                        what="--classes")
    if ways > ds.num_classes:
        raise ConfigError(f"--ways is {ways} but {'--classes selects' if classes else data + ' has'}"
                          f" only {ds.num_classes} classes; lower --ways or select more classes")
    config = EvalConfig(ways=ways, shots=shots, queries=queries, episodes=episodes, seed=seed,
                        timing_episodes=timing_episodes, full_episodes=full_episodes,
                        memory_episodes=memory_episodes,
                        step_sweep=step_sweep,
                        **({"methods": methods} if methods else {}))
    res = evaluate_adaptation(net, spec, ds, pre, drift=drift_net, theta0=theta0,
                              settings=settings, teacher=teacher, config=config,
                              metric=dmeta.get("metric", "cosine"), progress=progress)
    res.update({"data": str(data), "model": model, "weights": str(weights), "drift": str(drift),
                "classes": list(ds.classes)})
    return res
