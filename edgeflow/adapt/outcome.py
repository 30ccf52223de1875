"""Outcome meta-training of the drift: train it on what adaptation is for, the query loss after it.

Trajectory regression (:mod:`edgeflow.adapt.meta_train`, the paper's HyperFlow) teaches the drift to
imitate fine-tuning's path; on data nobody tuned for that imitation lowered accuracy (issue 17).
Here the drift is trained end to end, as CNAPs-style generators are: for each sampled task,

1. integrate the drift K Euler steps from theta0 (:func:`edgeflow.adapt.loop.drift_path`, open loop
   or closed loop every r steps), reading the prototypes and the support statistics
   (:mod:`edgeflow.adapt.signals`) - forward-only inputs the device has too;
2. pass the support and query sets through the backbone suffix at the adapted theta, classify the
   queries by their prototypes, and back-propagate the cross-entropy through the suffix and every
   Euler step into the drift's weights and its per-layer re-centring gain.

Tasks are drawn online from the base split with today's pixel shifts, and the cached prefix
activations of half of them get a feature-statistics perturbation (DSU: each channel's mean and
standard deviation moved by Gaussian noise scaled by their spread over the task's images, the same
noise for support and queries, so a task looks like it came from another domain). The drift starts
from the trajectory-regressed drift (warm start: its new inputs are zero-initialised and its gain
is minus the val-chosen re-centring strength, so at step 0 its velocity is that drift's plus a
re-centring term whose integral is that re-centring move), and the weights kept are those with the best
accuracy on the validation tasks (step 0 included: training never makes val worse).

With ``aux_weight`` > 0 the trajectory regression stays on as a decaying auxiliary term: every
step also adds ``aux_weight(step)`` times :func:`edgeflow.adapt.meta_train.regression_loss` on a
minibatch of the stored teacher trajectories (the data the warm start was regressed on), the weight
falling linearly to 0 at the last step (:func:`aux_weight_at`).

Under ``torchrun`` (``--nproc K``) each rank computes its share of every step's tasks (all ranks
draw every task, so the global batch is the single process's at any world size) and the gradients
are summed over ranks each step; the val tasks are scored in shards and re-assembled exactly, so
every rank takes the same keep / stop / damp decisions and the replicas stay bit-identical.

Example::

    drift, report = meta_train_outcome(base, pre, val_tasks, split, theta0, warm=drift0,
                                       recenter_init=0.5, config=OutcomeConfig())
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from edgeflow.adapt.apply import IntegratorSettings, prototype_logits
from edgeflow.adapt.drift import DriftConfig, DriftNet
from edgeflow.adapt.loop import drift_theta
from edgeflow.adapt.meta_train import on_device, regression_loss
from edgeflow.adapt.perturb import perturb_noise, perturb_statistics
from edgeflow.adapt.recenter import support_pass
from edgeflow.adapt.scores import shared_accuracy
from edgeflow.adapt.signals import stats_dim, support_stats
from edgeflow.adapt.split import Cache, SplitFeatures, TaskCache
from edgeflow.adapt.tasks import draw_task, sample_shift
from edgeflow.adapt.theta import prototypes
from edgeflow.adapt.trajectories import Trajectories
from edgeflow.data import EpisodeSampler, ImageDataset, Preprocess
from edgeflow.errors import ConfigError
from edgeflow.progress import ProgressBar

OBJECTIVES = ("trajectory", "outcome")
STATS_TASKS = 64  # the first val tasks, whose support statistics set the drift's input scales


@dataclass(frozen=True)
class OutcomeConfig:
    """Outcome meta-training: ``euler_steps`` K and ``loop_every`` r are also the device's."""

    steps: int = 300
    tasks_per_step: int = 8
    euler_steps: int = 5
    loop_every: int = 0  # 0: open loop; r: re-read the support set every r Euler steps
    ways: int = 5
    shots: tuple[int, ...] = (1, 5)
    queries: int = 10
    lr: float = 3e-4
    weight_decay: float = 1e-4
    use_stats: bool = True  # False (an ablation): statistics input and gain frozen at zero
    shot_tokens: bool = False  # the task encoder also reads the individual shots (drift.ShotEncoder)
    perturb: float = 1.0  # DSU noise scale on the cached activations (0: off)
    perturb_fraction: float = 0.5
    # weights are kept only if they do not lose more than this on the val class episodes without a
    # domain shift, at any shot count (the in-domain no-harm rule; then the best mean val accuracy)
    plain_tolerance: float = 0.0
    # when no weights do no harm in-domain, the whole move is scaled by these in turn until it
    # does (0: the drift moves nothing, the device keeps theta0)
    damping_choices: tuple[float, ...] = (0.75, 0.5, 0.25, 0.0)
    plain_fraction: float = 0.35  # tasks without a pixel shift
    # trajectory regression as a decaying auxiliary term (0: off, the outcome loss alone); its
    # weight at step s is aux_weight_at(s), on aux_batch trajectory rows per step
    aux_weight: float = 0.0
    aux_batch: int = 256
    instance_fraction: float = 0.3
    eval_every: int = 50
    patience: int = 4
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.steps < 0 or self.tasks_per_step < 1 or self.euler_steps < 1:
            raise ConfigError("outcome meta-training needs steps >= 0, tasks_per_step >= 1 and "
                              "euler_steps >= 1")
        if self.loop_every < 0:
            raise ConfigError(f"loop_every must be >= 0 (0: open loop), got {self.loop_every}")
        if not self.aux_weight >= 0 or self.aux_batch < 1:  # `not >=` also catches NaN
            raise ConfigError(f"aux_weight must be >= 0 (0: off) and aux_batch >= 1, got "
                              f"{self.aux_weight} and {self.aux_batch}")

    @property
    def settings(self) -> IntegratorSettings:
        """What the device runs: K Euler steps, closed loop every r (the gain does re-centring)."""
        return IntegratorSettings(method="euler", steps=self.euler_steps,
                                  loop_every=self.loop_every)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shots"] = list(self.shots)
        d["damping_choices"] = list(self.damping_choices)
        return d


def aux_weight_at(step: int, *, weight: float, steps: int) -> float:
    """The auxiliary term's weight at outcome step ``step`` (1..``steps``): ``weight`` at step 1,
    falling linearly to exactly 0 at the last step (a one-step run: 0).

    Linear rather than cosine: it has no shape parameter to tune, and early stopping can keep the
    weights of any eval point, so no point is favoured; the term anchors the drift to the teacher's
    velocities while the outcome gradients are new and hands over evenly, so the last steps answer
    to the outcome loss alone."""
    if steps <= 1:
        return 0.0
    return weight * (steps - step) / (steps - 1)


def query_loss(split: SplitFeatures, drift: DriftNet, support: Cache, support_y: torch.Tensor,
               query: Cache, query_y: torch.Tensor, ways: int, theta0: torch.Tensor, *,
               settings: IntegratorSettings, metric: str = "cosine") -> tuple[torch.Tensor, float]:
    """(cross-entropy of the queries after adaptation, their accuracy); differentiable in the
    drift's weights through the suffix and the integration."""
    theta = drift_theta(split, drift, support, support_y, ways, theta0, settings=settings)
    protos = prototypes(split.suffix(support, theta), support_y, ways)
    logits = prototype_logits(split.suffix(query, theta), protos, metric=metric)
    return F.cross_entropy(logits, query_y), float((logits.argmax(1) == query_y).float().mean())


def outcome_drift(warm: DriftNet | None, split: SplitFeatures, *, feature_dim: int,
                  hidden: int = 256, task_dim: int = 128, blocks: int = 3,
                  recenter_init: float = 0.0, shot_tokens: bool = False) -> DriftNet:
    """A drift that reads support statistics, warm-started from ``warm`` (a stats-free drift of the
    same theta) when given; its per-layer gain starts at ``-recenter_init`` (re-centring alpha).
    ``shot_tokens``: its task encoder also reads the individual shots (a path that starts at zero)."""
    spec = split.spec
    base = warm.config if warm is not None else DriftConfig(theta_dim=spec.size,
                                                             feature_dim=feature_dim,
                                                             hidden=hidden, task_dim=task_dim,
                                                             blocks=blocks)
    if base.theta_dim != spec.size:
        raise ConfigError(f"the warm-start drift has theta_dim {base.theta_dim}, the backbone's "
                          f"theta has {spec.size}")
    cfg = DriftConfig(**{**base.to_dict(), "stats_dim": stats_dim(spec.size),
                         "layer_sizes": list(spec.sizes), "shot_tokens": shot_tokens})
    drift = DriftNet(cfg)
    if warm is not None:
        missing, unexpected = drift.load_state_dict(warm.state_dict(), strict=False)
        new = ("velocity_net.", "task_encoder.shots.")  # the parts a stats-free drift lacks
        assert not unexpected and all(k.startswith(new) for k in missing), missing
    with torch.no_grad():
        drift.velocity_net.layer_gain.fill_(-recenter_init)
    return drift


@torch.no_grad()
def _set_stats_scales(drift: DriftNet, split: SplitFeatures, tasks: list[TaskCache],
                      theta0: torch.Tensor) -> None:
    rows = []
    for t in tasks:
        feats, means = support_pass(split, t.support_only, theta0)
        rows.append(support_stats(feats, means, t.support_y, t.ways, theta0))
    s = torch.stack(rows)
    vn = drift.velocity_net
    vn.stats_center.copy_(s.mean(0))
    vn.stats_scale.copy_(s.std(0).nan_to_num(1.0).clamp_min(1e-3))


def meta_train_outcome(base: ImageDataset, pre: Preprocess, val_tasks: list[TaskCache],
                       split: SplitFeatures, theta0: torch.Tensor, *, config: OutcomeConfig,
                       warm: DriftNet | None = None, recenter_init: float = 0.0,
                       trajectories: Trajectories | None = None, target: str = "linear",
                       metric: str = "cosine", progress: bool = False) -> tuple[DriftNet, dict]:
    """Train an outcome drift (see the module docstring); returns (drift in eval mode, report).

    ``trajectories`` (with the velocity ``target`` kind they were regressed with) feed the
    auxiliary regression term (required when ``config.aux_weight`` > 0); when given, every eval
    also records the regression loss on a fixed batch of them (``aux_loss``), weight 0 included.
    Under torchrun a rank reads the caches of only its shard of ``val_tasks`` and of the first
    ``STATS_TASKS``; the others may be :class:`~edgeflow.adapt.workflow.TaskStub`.
    """
    if not val_tasks:
        raise ConfigError("outcome meta-training needs validation tasks to keep the best weights")
    if config.aux_weight > 0 and trajectories is None:
        raise ConfigError("aux_weight > 0 needs the teacher trajectories (trajectories=...); "
                          "pass them or set aux_weight to 0")
    from edgeflow import distributed
    from edgeflow.train import resolve_device

    device = distributed.device_for_rank(resolve_device(config.device))
    ranks = distributed.info()
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    rng = np.random.default_rng([config.seed, 17])
    dim = split.suffix(val_tasks[0].support_only, theta0).shape[1]
    drift = outcome_drift(warm, split, feature_dim=dim, recenter_init=recenter_init,
                          shot_tokens=config.shot_tokens)
    _set_stats_scales(drift, split, val_tasks[:STATS_TASKS], theta0)
    if not config.use_stats:  # prototypes only: the new inputs stay exactly zero
        vn = drift.velocity_net
        with torch.no_grad():
            vn.layer_gain.zero_()
        for p in (vn.stats_in.weight, vn.stats_in.bias, vn.layer_gain):
            p.requires_grad_(False)
    settings = config.settings
    samplers = {k: EpisodeSampler(base.labels, ways=config.ways, shots=k, queries=config.queries,
                                  seed=config.seed + 31 * k) for k in config.shots}
    drift.eval()
    # in-domain val tasks: class episodes without a domain shift, one group per shot count (a
    # mean over instance tasks and shot counts hid a 5-shot loss on B2)
    groups = [np.array([not t.shift and t.kind == "class" and t.shots == k for t in val_tasks])
              for k in sorted({t.shots for t in val_tasks})]
    groups = [g for g in groups if g.any()]
    none = np.asarray(shared_accuracy(drift, split, val_tasks, theta0, device=device,
                                      settings=replace(settings, steps=0), metric=metric))
    base_acc = float(none.mean())

    def score(model: DriftNet) -> tuple[bool, float, float]:
        """(does no harm in-domain at every shot count, mean val accuracy, the worst in-domain
        gain): weights that lose in-domain are kept only if nothing else is found."""
        accs = np.asarray(shared_accuracy(model, split, val_tasks, theta0, settings=settings,
                                          metric=metric, device=device))
        gain = min((float((accs - none)[g].mean()) for g in groups), default=0.0)
        return gain >= -config.plain_tolerance, float(accs.mean()), gain

    # the auxiliary term's rows come from their own generator: aux_weight 0 draws exactly the
    # tasks and noise of a run without it (and trains the same weights, checked bit for bit)
    aux_gen = torch.Generator().manual_seed(config.seed + 4099)
    aux, aux_eval = None, None
    if trajectories is not None:
        aux = on_device(trajectories, device)
        n_eval = min(1024, 4 * len(trajectories))
        aux_eval = (torch.randint(len(trajectories), (n_eval,), generator=aux_gen).to(device),
                    torch.rand(n_eval, generator=aux_gen).to(device))

    def aux_loss(rows: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return regression_loss(drift.trajectory_velocity, aux, rows, t, kind=target,
                               scale=drift.velocity_net.velocity_scale)

    def aux_eval_loss() -> float | None:
        if aux_eval is None:
            return None
        with torch.no_grad():
            return float(aux_loss(*aux_eval))

    start = score(drift)
    start_acc = start[1]
    best = (start[:2], 0, copy.deepcopy(drift.state_dict()))
    drift.to(device)
    history = [{"step": 0, "val_acc": start_acc, "val_in_domain_gain": start[2],
                "aux_weight": aux_weight_at(1, weight=config.aux_weight, steps=config.steps),
                "aux_loss": aux_eval_loss()}]
    opt = torch.optim.AdamW([p for p in drift.parameters() if p.requires_grad], lr=config.lr,
                            weight_decay=config.weight_decay)
    bar = ProgressBar(progress and ranks.is_main, config.steps, "meta-train (outcome)")
    t_start, bad, running, skipped, computed = time.perf_counter(), 0, None, 0, 0
    # under torchrun each rank computes its shard of every step's task list; all ranks still draw
    # every task (the streams stay where one process has them: task j of step s is the same task
    # at any world size, so the global batch is the single process's) and sum their gradients
    mine = distributed.shard(config.tasks_per_step)
    layout = val_tasks[0].query  # the cache layout, to replay the noise of other ranks' tasks
    trainable = [p for p in drift.parameters() if p.requires_grad]
    net, th0 = split.model.to(device), theta0.to(device)
    frozen = [p for p in net.parameters() if p.requires_grad]
    for p in frozen:  # gradients go to the drift only (theta enters the suffix as an input)
        p.requires_grad_(False)
    drift.to(device)
    for step in range(1, config.steps + 1):
        drift.train()
        total, accs = 0.0, []
        w_aux = aux_weight_at(step, weight=config.aux_weight, steps=config.steps)
        if w_aux > 0:
            rows = torch.randint(len(aux.stop), (config.aux_batch,), generator=aux_gen).to(device)
            t_aux = torch.rand(config.aux_batch, generator=aux_gen).to(device)
            if ranks.is_main:  # once per step, not once per rank (the gradients are summed)
                (w_aux * aux_loss(rows, t_aux)).backward()
        for j in range(config.tasks_per_step):
            k = config.shots[(step * config.tasks_per_step + j) % len(config.shots)]
            shift = sample_shift(rng, plain_fraction=config.plain_fraction)
            task = draw_task(base, rng, pre, episode=samplers[k].episode(step * 1000 + j),
                             instance_fraction=config.instance_fraction, shift=shift,
                             seed=[config.seed, step, j])
            perturb = config.perturb and rng.random() < config.perturb_fraction
            if j not in mine:  # another rank's task: only advance the noise stream past it
                if perturb:
                    perturb_noise(layout, gen, strength=config.perturb)
                continue
            computed += 1
            x = torch.cat([task.support_x, task.query_x]).to(device)
            cache = split.prefix(x)
            if perturb:
                cache = perturb_statistics(cache, gen, strength=config.perturb)
            ns = len(task.support_y)
            sup, qry = tuple(c[:ns] for c in cache), tuple(c[ns:] for c in cache)
            loss, acc = query_loss(split, drift, sup, task.support_y.to(device), qry,
                                   task.query_y.to(device), config.ways, th0, settings=settings,
                                   metric=metric)
            if not torch.isfinite(loss):  # a degenerate task: skip it rather than poison Adam
                skipped += 1
                continue
            (loss / config.tasks_per_step).backward()
            total += float(loss.detach()) / config.tasks_per_step
            accs.append(acc)
        # every rank, every step (a rank whose tasks were all skipped sends zeros): the sum is
        # the global batch's mean gradient, identical on all ranks, so the replicas stay equal
        distributed.all_reduce_gradients(trainable)
        total = distributed.all_reduce_sum([total], device)[0]
        torch.nn.utils.clip_grad_norm_(drift.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        running = total if running is None else 0.95 * running + 0.05 * total
        bar.advance(f"loss {running:.3f} best val {best[0][1]:.4f}")
        if step % config.eval_every == 0 or step == config.steps:
            drift.eval()
            net.cpu()
            now = score(drift.cpu())
            net.to(device)
            drift.to(device)
            acc_sum, acc_n = distributed.all_reduce_sum([sum(accs), len(accs)], device)
            train_acc = float(np.mean(accs)) if not ranks.enabled else acc_sum / max(acc_n, 1)
            history.append({"step": step, "loss": running, "train_acc": train_acc,
                            "val_acc": now[1], "val_in_domain_gain": now[2],
                            "aux_weight": w_aux, "aux_loss": aux_eval_loss(),
                            "seconds": time.perf_counter() - t_start})
            if now[:2] > best[0]:  # no harm first, then accuracy
                best, bad = (now[:2], step, copy.deepcopy(drift.state_dict())), 0
            else:
                bad += 1
                if bad >= config.patience:
                    break
    bar.close()
    for p in frozen:
        p.requires_grad_(True)
    net.cpu()
    drift.cpu().load_state_dict(best[2])
    drift.eval()
    damping = 1.0
    if not best[0][0]:  # nothing did no harm in-domain: damp the whole move until it does
        for lam in config.damping_choices:
            damp(drift, lam / damping)
            damping = lam
            now = score(drift)
            history.append({"step": best[1], "damping": lam, "val_acc": now[1],
                            "val_in_domain_gain": now[2]})
            if now[0]:
                best = (now[:2], best[1], best[2])
                break
    skipped = int(distributed.all_reduce_sum([skipped], device)[0])
    report = {"objective": "outcome", "history": history, "best_step": best[1],
              "damping": damping,
              "val_acc_no_adaptation": base_acc, "val_acc_warm_start": start_acc,
              "val_acc_chosen": best[0][1], "val_no_harm_in_domain": best[0][0],
              "val_in_domain_tasks": [int(g.sum()) for g in groups], "integrator": settings.to_dict(),
              "layer_gain": drift.velocity_net.layer_gain.tolist(), "skipped_tasks": skipped,
              "seconds": time.perf_counter() - t_start, "config": config.to_dict(),
              "aux_target": target if trajectories is not None else None,
              "drift_config": drift.config.to_dict(), "val_tasks": len(val_tasks),
              # training tasks each rank computed (rank 0's list; None elsewhere)
              "world_size": ranks.world_size, "tasks_by_rank": distributed.gather_to_main(computed)}
    return drift, report


@torch.no_grad()
def damp(drift: DriftNet, factor: float) -> None:
    """Scale the drift's whole velocity by ``factor`` (its output scale and its re-centring gain,
    both exported with the graph, so the device needs nothing new)."""
    drift.velocity_net.velocity_scale.mul_(factor)
    if drift.uses_stats:
        drift.velocity_net.layer_gain.mul_(factor)
