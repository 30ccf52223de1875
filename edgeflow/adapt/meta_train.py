"""Meta-training the drift: regression on the velocities of the teacher's trajectories.

Each trajectory theta_0..theta_L (L = the task's stopping step k*) is read as a path over t in
[0, 1]. For t ~ U[0, 1): segment k = floor(t L), LOCAL fraction u = t L - k,

- ``linear``: theta_t = (1-u) theta_k + u theta_{k+1},  v = (theta_{k+1} - theta_k) L;
- ``cubic``: the Catmull-Rom spline through theta_{k-1..k+2} (ends clamped) and its derivative
  times L.

L = 0 (adaptation does not help this task) gives theta_t = theta_0 and v = 0. The loss is the MSE
between h(theta_t, t, z(S)) and v, in units of the per-coordinate velocity scale. Validation is the
real thing: integrate the drift on val-split tasks and measure their query accuracy; the best
weights by that accuracy are kept (early stopping), then the number of Euler steps and the
re-centring strength (:mod:`edgeflow.adapt.recenter`; steps 0 = the drift unused) are chosen
jointly on the same tasks.

Under ``torchrun`` the drift trains in DistributedDataParallel (``batch_size`` is the global batch,
each rank draws its own rows) and the validation tasks are split across ranks and their accuracies
summed, so every rank takes the same early-stopping decision. ``device`` puts the regression on a
GPU; the backbone suffix that scores val tasks stays where the backbone is (the CPU here).

Example::

    drift, report = meta_train(data, val_tasks, split, theta0, config=MetaTrainConfig())
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch

from edgeflow import distributed
from edgeflow.adapt.apply import IntegratorSettings, prototype_logits
from edgeflow.adapt.drift import DriftConfig, DriftNet
from edgeflow.adapt.recenter import recenter_move, theta_means
from edgeflow.adapt.split import SplitFeatures, TaskCache
from edgeflow.adapt.theta import prototypes
from edgeflow.adapt.trajectories import Trajectories
from edgeflow.errors import ConfigError, unknown_name
from edgeflow.integrate import integrate
from edgeflow.progress import ProgressBar

TARGETS = ("linear", "cubic")


def velocity_targets(paths: torch.Tensor, stop: torch.Tensor, t: torch.Tensor, *,
                     kind: str = "linear") -> tuple[torch.Tensor, torch.Tensor]:
    """(theta_t, v) for paths (B, T+1, P) truncated at ``stop`` (B,), at times ``t`` (B,) in [0, 1).

    Uses the local segment fraction u (not the global t) to interpolate.
    """
    if kind not in TARGETS:
        raise unknown_name("velocity target", kind, TARGETS)
    length = stop.to(paths.dtype)
    k = torch.floor(t * length).long().clamp(min=0)
    k = torch.minimum(k, (stop - 1).clamp(min=0))
    u = (t * length - k.to(paths.dtype))[:, None]
    rows = torch.arange(len(paths))

    def at(i: torch.Tensor) -> torch.Tensor:
        return paths[rows, torch.minimum(i.clamp(min=0), stop)]

    p1, p2 = at(k), at(k + 1)
    scale = length[:, None]
    if kind == "linear":
        theta_t = (1 - u) * p1 + u * p2
        v = (p2 - p1) * scale
    else:
        p0, p3 = at(k - 1), at(k + 2)
        a, b = -p0 + p2, 2 * p0 - 5 * p1 + 4 * p2 - p3
        c = -p0 + 3 * p1 - 3 * p2 + p3
        theta_t = 0.5 * (2 * p1 + a * u + b * u ** 2 + c * u ** 3)
        v = 0.5 * (a + 2 * b * u + 3 * c * u ** 2) * scale
    still = stop == 0  # constant trajectory: stay at theta_0
    theta_t = torch.where(still[:, None], paths[:, 0], theta_t)
    v = torch.where(still[:, None], torch.zeros_like(v), v)
    return theta_t, v


def regression_loss(velocity: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
                    data: Trajectories, rows: torch.Tensor, t: torch.Tensor, *, kind: str,
                    scale: torch.Tensor) -> torch.Tensor:
    """Trajectory regression: the mean squared error between ``velocity(theta_t, t, prototypes)``
    and the teacher's velocity (:func:`velocity_targets`) at trajectory ``rows`` and times ``t``,
    in units of the per-coordinate velocity ``scale``. ``velocity`` is a drift (or its DDP wrapper),
    or :meth:`DriftNet.trajectory_velocity` of a drift that reads support statistics."""
    theta_t, v = velocity_targets(data.paths[rows], data.stop[rows], t, kind=kind)
    pred = velocity(theta_t, t[:, None], data.protos[data.task_row[rows]])
    return ((pred - v) / scale).pow(2).mean()


def on_device(data: Trajectories, device: torch.device | str) -> Trajectories:
    """The tensors :func:`regression_loss` reads, moved to ``device`` (the rest unchanged)."""
    return replace(data, paths=data.paths.to(device), stop=data.stop.to(device),
                   protos=data.protos.to(device), task_row=data.task_row.to(device))


@dataclass(frozen=True)
class MetaTrainConfig:
    """Optimisation of the drift; network sizes go to :class:`DriftConfig`."""

    target: str = "linear"
    steps: int = 3000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    eval_every: int = 250
    patience: int = 4
    hidden: int = 256
    task_dim: int = 128
    blocks: int = 3
    eval_steps: int = 10
    step_choices: tuple[int, ...] = (1, 2, 5, 10, 20, 50)
    # re-centring strengths tried with every step count (and with 0 steps: re-centring alone)
    recenter_choices: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    step_tolerance: float = 0.002
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise unknown_name("velocity target", self.target, TARGETS)
        if self.steps < 0 or self.batch_size < 1 or self.eval_every < 1:
            raise ConfigError("meta-training needs steps >= 0, batch_size >= 1, eval_every >= 1")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["step_choices"] = list(self.step_choices)
        d["recenter_choices"] = list(self.recenter_choices)
        return d


@torch.no_grad()
def adapt_batch(drift: DriftNet, protos: torch.Tensor, theta0: torch.Tensor, *,
                settings: IntegratorSettings, means: torch.Tensor | None = None) -> torch.Tensor:
    """Adapt a batch of tasks at once: protos (B, W, D) -> theta (B, P). ``means`` (B, P) are the
    support means of the theta layers at theta0 (:func:`task_means`), needed when re-centring."""
    theta = theta0.expand(len(protos), -1)
    if settings.steps:
        z = drift.embed_task(protos)
        theta = integrate(lambda t, th: drift.velocity(th, t, z), theta, steps=settings.steps,
                          dt=settings.dt, method=settings.method)
    if settings.recenter:
        if means is None:
            raise ConfigError("re-centring needs the support means of the theta layers")
        theta = theta + recenter_move(theta0, means, alpha=settings.recenter)
    return theta


@torch.no_grad()
def task_accuracy(split: SplitFeatures, task: TaskCache, theta: torch.Tensor, *,
                  metric: str = "cosine") -> float:
    """Query accuracy of the prototype classifier at ``theta`` on a cached task."""
    sup = split.suffix(task.support_only, theta)
    logits = prototype_logits(split.suffix(task.query, theta),
                              prototypes(sup, task.support_y, task.ways), metric=metric)
    return float((logits.argmax(1) == task.query_y).float().mean())


@torch.no_grad()
def task_prototypes(split: SplitFeatures, tasks: list[TaskCache], theta0: torch.Tensor) -> torch.Tensor:
    """Support prototypes at theta0 of same-ways tasks: (n, W, D)."""
    return torch.stack([prototypes(split.suffix(t.support_only, theta0), t.support_y, t.ways)
                        for t in tasks])


@torch.no_grad()
def task_means(split: SplitFeatures, tasks: list[TaskCache], theta0: torch.Tensor) -> torch.Tensor:
    """Support means (n, P) of the theta layers' outputs at theta0 (what re-centring reads)."""
    return torch.stack([theta_means(split, t.support_only, theta0).mean(0) for t in tasks])


def val_accuracy(drift: DriftNet, split: SplitFeatures, tasks: list[TaskCache], theta0: torch.Tensor,
                 protos: torch.Tensor, *, settings: IntegratorSettings,
                 metric: str = "cosine", means: torch.Tensor | None = None) -> float:
    """Mean query accuracy after integrating the drift on every task.

    Under torchrun each rank scores its share of the tasks and the sum is all-reduced: the same
    number on every rank, in about 1/K of the time.
    """
    mine = distributed.shard(len(tasks))
    dev = next(drift.parameters()).device
    total = 0.0
    if len(mine):  # more ranks than tasks leaves some with none; they still join the all-reduce
        part = None if means is None else means[mine.start:mine.stop].to(dev)
        thetas = adapt_batch(drift, protos[mine.start:mine.stop].to(dev), theta0.to(dev),
                             settings=settings, means=part).to(theta0.device)
        total = sum(task_accuracy(split, tasks[i], th, metric=metric)
                    for i, th in zip(mine, thetas, strict=True))
    return distributed.all_reduce_sum([total], dev)[0] / len(tasks)


def _set_scales(drift: DriftNet, data: Trajectories, kind: str, gen: torch.Generator) -> None:
    """Normalisation buffers from trajectory statistics (so the net sees O(1) inputs/outputs)."""
    rows = torch.randint(len(data), (min(20000, 20 * len(data)),), generator=gen)
    t = torch.rand(len(rows), generator=gen)
    theta_t, v = velocity_targets(data.paths[rows], data.stop[rows], t, kind=kind)
    vn = drift.velocity_net
    vn.theta_center.copy_(theta_t.mean(0))
    vn.theta_scale.copy_(theta_t.std(0).clamp_min(1e-3))
    moving = v[data.stop[rows] > 0]
    rms = moving.pow(2).mean(0).sqrt() if len(moving) else torch.ones_like(v[0])
    vn.velocity_scale.copy_(rms.clamp_min(0.1 * float(rms.median()) + 1e-8))


def meta_train(data: Trajectories, val_tasks: list[TaskCache], split: SplitFeatures,
               theta0: torch.Tensor, *, config: MetaTrainConfig, metric: str = "cosine",
               progress: bool = False) -> tuple[DriftNet, dict]:
    """Train a DriftNet on ``data``; early-stop and choose the Euler step count on ``val_tasks``.

    Returns (drift in eval mode, report with history, best val accuracy and chosen settings).
    """
    if not val_tasks:
        raise ConfigError("meta-training needs validation tasks for early stopping")
    from edgeflow.train import resolve_device

    device = distributed.device_for_rank(resolve_device(config.device))
    rank = distributed.setup(device)
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)  # scales: identical on every rank
    dcfg = DriftConfig(theta_dim=data.paths.shape[-1], feature_dim=data.protos.shape[-1],
                       hidden=config.hidden, task_dim=config.task_dim, blocks=config.blocks)
    drift = DriftNet(dcfg)
    _set_scales(drift, data, config.target, gen)
    drift.to(device)
    # rows: each rank its own stream and share of the global batch (one process: unchanged)
    rows_gen = torch.Generator().manual_seed(config.seed + 7919 * rank.rank) if rank.enabled else gen
    local_batch = max(1, config.batch_size // rank.world_size)
    data_dev = on_device(data, device)
    net = distributed.wrap_ddp(drift, device)
    vprotos = task_prototypes(split, val_tasks, theta0)
    opt = torch.optim.AdamW(drift.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    eval_settings = IntegratorSettings(method="euler", steps=config.eval_steps)
    drift.eval()
    base = val_accuracy(drift, split, val_tasks, theta0, vprotos, settings=eval_settings,
                        metric=metric)
    best = (base, 0, copy.deepcopy(drift.state_dict()))
    history = [{"step": 0, "val_acc": base}]
    bar = ProgressBar(progress and rank.is_main, config.steps, "meta-train")
    t_start, bad, running = time.perf_counter(), 0, 0.0
    vscale = drift.velocity_net.velocity_scale
    for step in range(1, config.steps + 1):
        drift.train()
        rows = torch.randint(len(data), (local_batch,), generator=rows_gen).to(device)
        t = torch.rand(local_batch, generator=rows_gen).to(device)
        loss = regression_loss(net, data_dev, rows, t, kind=config.target, scale=vscale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running = loss.item() if step == 1 else 0.98 * running + 0.02 * loss.item()  # this rank's
        bar.advance(f"loss {running:.4f} best val {best[0]:.4f}")
        if step % config.eval_every == 0 or step == config.steps:
            drift.eval()
            acc = val_accuracy(drift, split, val_tasks, theta0, vprotos, settings=eval_settings,
                               metric=metric)
            history.append({"step": step, "loss": running, "val_acc": acc,
                            "seconds": time.perf_counter() - t_start})
            if acc > best[0]:
                best, bad = (acc, step, copy.deepcopy(drift.state_dict())), 0
            else:
                bad += 1
                if bad >= config.patience:
                    break
    bar.close()
    drift.load_state_dict(best[2])
    drift.eval()
    vmeans = task_means(split, val_tasks, theta0)
    counts = (0, *config.step_choices)
    grid = {(a, s): val_accuracy(drift, split, val_tasks, theta0, vprotos, metric=metric,
                                 settings=IntegratorSettings(method="euler", steps=s, recenter=a),
                                 means=vmeans)
            for a in config.recenter_choices for s in counts if a or s}
    grid[(0.0, 0)] = base
    top = max(grid.values())
    # the cheapest setting within tolerance of the best: fewest steps, then the mildest alpha
    steps, alpha = min((s, a) for (a, s), acc in grid.items() if acc >= top - config.step_tolerance)
    by_steps = {s: grid[(0.0, s)] if (0.0, s) in grid else val_accuracy(
        drift, split, val_tasks, theta0, vprotos, metric=metric,
        settings=IntegratorSettings(method="euler", steps=s)) for s in config.step_choices}
    report = {"history": history, "best_step": best[1], "best_val_acc": best[0],
              "val_acc_no_adaptation": base, "val_acc_by_euler_steps": by_steps,
              "val_acc_by_recenter": {str(a): {str(s): grid[(a, s)] for s in counts}
                                      for a in config.recenter_choices},
              "val_acc_chosen": grid[(alpha, steps)],
              "integrator": IntegratorSettings(method="euler", steps=steps,
                                               recenter=alpha).to_dict(),
              "seconds": time.perf_counter() - t_start, "config": config.to_dict(),
              "drift_config": dcfg.to_dict(), "world_size": rank.world_size}
    return drift.cpu(), report
