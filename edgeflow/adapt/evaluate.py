"""Few-shot evaluation harness: every method on the same seeded episodes, accuracy and cost.

Methods (:data:`METHODS`): ``none`` (prototypes at theta0), ``teacher`` (Adam on theta by backprop,
the recipe chosen on val), ``hyperflow-euler`` / ``hyperflow-heun`` (integrate the drift, plus the
re-centring move when the settings have one; no gradients), ``hyperflow-guard`` (the forward-only
guard of :mod:`edgeflow.adapt.guard` over theta0, re-centring and the drift's path; at 1 shot
it scores with the support images' flipped views), ``recenter``
(the re-centring move alone, at the settings' alpha: what the drift adds is hyperflow minus
this), ``full-finetune`` (Adam on every backbone weight; only on the first ``full_episodes``
episodes of the largest shot count, it is expensive). The Euler step sweep also runs on the largest
shot count only.

Accuracy: mean over episodes with a 95% interval 1.96 * std / sqrt(n). Cost, per episode, measured
in the same run on the first ``timing_episodes`` episodes (``time.perf_counter``):

- ``adapt_ms``: the adaptation step alone, support set -> ready classifier (the theta methods
  start from the support set's cached prefix activations and end with the support prototypes at
  their theta, which no adaptation computes at theta0; full fine-tuning starts from the images);
  ``adapt_extra_ms`` = minus ``none``'s, per episode;
- ``median_ms``: the whole method end to end, from preprocessed support/query tensors to query
  logits, each method computing its own features; ``extra_ms`` = minus ``none``'s, per episode;
- ``adapt_peak_mib``: peak of live PyTorch CPU allocations during the adaptation step, from the
  allocation events of ``torch.profiler`` (profile_memory=True), on ``memory_episodes`` episodes
  (the teacher's includes what autograd keeps for backprop and Adam's state); ``adapt_extra_mib``
  = minus ``none``'s median.

Example::

    res = evaluate_adaptation(model, spec, ds, pre, drift=drift, theta0=theta0,
                              settings=IntegratorSettings(steps=10), teacher=TeacherConfig(),
                              config=EvalConfig(shots=(1, 5), episodes=600))
"""

from __future__ import annotations

import copy
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from edgeflow.adapt.apply import IntegratorSettings, prototype_logits
from edgeflow.adapt.drift import DriftNet
from edgeflow.adapt.loop import drift_theta
from edgeflow.adapt.meta_train import task_accuracy
from edgeflow.adapt.split import SplitFeatures, TaskCache
from edgeflow.adapt.tasks import Task, make_task
from edgeflow.adapt.teacher import TeacherConfig, finetune, resolve_loss, support_loss
from edgeflow.adapt.theta import ThetaSpec, prototypes
from edgeflow.data import EpisodeSampler, ImageDataset, Preprocess
from edgeflow.errors import ConfigError, unknown_name
from edgeflow.models import Backbone
from edgeflow.progress import ProgressBar

METHODS = ("none", "teacher", "recenter", "hyperflow-euler", "hyperflow-heun", "hyperflow-guard",
           "full-finetune")


@dataclass(frozen=True)
class EvalConfig:
    """Episodes and what to measure. ``step_sweep``: extra Euler step counts (accuracy only)."""

    ways: int = 5
    shots: tuple[int, ...] = (1, 5)
    queries: int = 15
    episodes: int = 600
    seed: int = 0
    methods: tuple[str, ...] = ("none", "teacher", "recenter", "hyperflow-euler", "hyperflow-heun")
    timing_episodes: int = 50
    memory_episodes: int = 3
    full_episodes: int = 20
    full_lr: float = 1e-4
    step_sweep: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for m in self.methods:
            if m not in METHODS:
                raise unknown_name("method", m, METHODS)
        if self.episodes < 1 or not self.shots:
            raise ConfigError("evaluation needs episodes >= 1 and at least one shot count")

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("shots", "methods", "step_sweep"):
            d[k] = list(d[k])
        return d


def select_classes(ds: ImageDataset, class_ids: list[int] | tuple[int, ...], *,
                   what: str) -> ImageDataset:
    """Only ``class_ids`` of ``ds`` (relabelled 0..n-1 in that order); none given: all of ``ds``.

    ``what`` names the option in the error (compile's ``data.novel_classes``, evaluate's
    ``--classes``), which both parse with ``edgeflow.pipeline.config.parse_int_list``.
    """
    if not class_ids:
        return ds
    bad = [i for i in class_ids if not 0 <= i < ds.num_classes]
    if bad:
        raise ConfigError(f"{what}: class indices {bad} do not exist; {ds.source} has classes "
                          f"0-{ds.num_classes - 1}")
    return ds.select_classes(list(class_ids))


def mean_ci(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% interval = 1.96 * sample std / sqrt(n))."""
    arr = np.asarray(values, dtype=np.float64)
    if len(arr) < 2:
        return float(arr.mean()), float("nan")
    return float(arr.mean()), float(1.96 * arr.std(ddof=1) / math.sqrt(len(arr)))


@contextmanager
def _quiet_fd2() -> Iterator[None]:
    """torch 2.13's profiler prints 'USDT: profiler_start/stop' from C++ straight to file
    descriptor 2 at every measurement; mute fd 2 for just that long."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory_bytes(fn: Callable[[], object]) -> int:
    """Peak of live PyTorch CPU allocations made while ``fn`` runs (profiler allocation events)."""
    from torch.profiler import ProfilerActivity, profile

    with _quiet_fd2(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak


class Adapter:
    """The methods, each ``run(name, task, cache=None) -> query accuracy``. Without ``cache`` a
    method computes everything itself from the task tensors (what the timing measures)."""

    def __init__(self, model: Backbone, spec: ThetaSpec, *, theta0: torch.Tensor,
                 drift: DriftNet | None, settings: IntegratorSettings, teacher: TeacherConfig,
                 metric: str = "cosine", full_lr: float = 1e-4) -> None:
        self.model, self.spec, self.theta0 = model.eval(), spec, theta0
        self.split = SplitFeatures(model, spec)
        self.drift, self.settings, self.teacher = drift, settings, teacher
        self.metric, self.full_lr = metric, full_lr

    def cache(self, task: Task, *, views: bool | None = None) -> TaskCache:
        return TaskCache(self.split, task.support_x, task.support_y, task.query_x, task.query_y,
                         task.ways, views=views)

    def hyperflow_theta(self, tc: TaskCache, settings: IntegratorSettings) -> torch.Tensor:
        if self.drift is None and settings.steps:
            raise ConfigError("HyperFlow needs a drift checkpoint (--drift)")
        with torch.no_grad():
            return drift_theta(self.split, self.drift, tc.support_only, tc.support_y, tc.ways,
                               self.theta0, settings=settings)

    def adapt_theta(self, name: str, tc: TaskCache) -> torch.Tensor:
        """The adaptation step of a theta method: support set (prefix cache) -> adapted theta."""
        if name == "none":
            return self.theta0
        if name == "teacher":
            return finetune(self.split, tc.support, tc.support_y, tc.ways, self.theta0,
                            config=self.teacher).path[-1]
        if name == "recenter":
            return self.hyperflow_theta(tc, replace(self.settings, steps=0))
        if name == "hyperflow-guard":  # the forward-only guard over the settings' candidates
            from edgeflow.adapt.guard import guard_theta

            return guard_theta(self.split, self.drift, tc.support_only, tc.support_y, tc.ways,
                               self.theta0, settings=self.settings, views=tc.views)[0]
        if name.startswith("hyperflow-"):
            return self.hyperflow_theta(tc, replace(self.settings,
                                                    method=name.removeprefix("hyperflow-")))
        raise unknown_name("method", name, METHODS)

    def run(self, name: str, task: Task, cache: TaskCache | None = None) -> float:
        """Query accuracy of ``name`` on ``task`` (end to end from the tensors without ``cache``)."""
        if name == "full-finetune":
            return self.full_classify(self.full_finetune(task), task)
        # the teacher's flip loss and the 1-shot guard score with the support set's flipped views
        needs_views = ((name == "teacher" and resolve_loss(self.teacher.loss, task.shots) == "flip")
                       or (name == "hyperflow-guard" and task.shots < 2))
        tc = cache if cache is not None else self.cache(task, views=needs_views)
        return task_accuracy(self.split, tc, self.adapt_theta(name, tc), metric=self.metric)

    def full_finetune(self, task: Task) -> Backbone:
        """Adam on all weights with the teacher's loss and steps (BatchNorm in eval mode)."""
        net = copy.deepcopy(self.model).eval()
        opt = torch.optim.Adam(net.parameters(), lr=self.full_lr)
        loss_name = resolve_loss(self.teacher.loss, task.shots)
        x = task.support_x if loss_name == "loo" else torch.cat([task.support_x,
                                                                  task.support_x.flip(3)])
        for _ in range(self.teacher.steps):
            loss = support_loss(net.features(x), task.support_y, task.ways, loss=loss_name,
                                metric=self.metric, scale=self.teacher.scale)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return net

    @torch.no_grad()
    def full_classify(self, net: Backbone, task: Task) -> float:
        protos = prototypes(net.features(task.support_x), task.support_y, task.ways)
        logits = prototype_logits(net.features(task.query_x), protos, metric=self.metric)
        return float((logits.argmax(1) == task.query_y).float().mean())

    def adapt_step(self, name: str, task: Task, tc: TaskCache) -> object:
        """What the adaptation-step time and memory measure: support set -> ready classifier.

        For the theta methods that is the support prototypes at the adapted theta, from the support
        set's cached prefix activations; "none" does that at theta0, so the step costs it too and
        a method's *extra* cost over "none" is what adapting adds. Full fine-tuning starts from
        the images and ends with the tuned network.
        """
        if name == "full-finetune":
            return self.full_finetune(task)
        theta = self.adapt_theta(name, tc)
        with torch.no_grad():
            return prototypes(self.split.suffix(tc.support_only, theta), tc.support_y, tc.ways)

    def sweep(self, tc: TaskCache, steps: tuple[int, ...], method: str = "euler") -> dict[int, float]:
        """Query accuracy after integrating with each step count (same z, same start)."""
        return {s: task_accuracy(self.split, tc,
                                 self.hyperflow_theta(tc, replace(self.settings, method=method,
                                                                  steps=s)),
                                 metric=self.metric) for s in steps}


def _summary(accs: list[float], times: list[float], adapt_times: list[float],
             peaks: list[int]) -> dict:
    mean, ci = mean_ci(accs)
    return {"accuracy": mean, "ci95": ci, "episodes": len(accs),
            "median_ms": statistics.median(times) * 1e3 if times else None,
            "adapt_ms": statistics.median(adapt_times) * 1e3 if adapt_times else None,
            "adapt_peak_mib": statistics.median(peaks) / 2**20 if peaks else None}


def evaluate_adaptation(model: Backbone, spec: ThetaSpec, ds: ImageDataset, pre: Preprocess, *,
                        drift: DriftNet | None, theta0: torch.Tensor,
                        settings: IntegratorSettings, teacher: TeacherConfig, config: EvalConfig,
                        metric: str = "cosine", progress: bool = False,
                        keep_episodes: bool = False) -> dict:
    """Accuracy (+95% CI), median time and peak memory per shot count and method; same episodes
    (``EpisodeSampler(seed=config.seed)``) for every method. Adds ``extra_ms``/``extra_mib`` over
    ``none`` and, with ``step_sweep``, accuracy per Euler step count."""
    adapter = Adapter(model, spec, theta0=theta0, drift=drift, settings=settings, teacher=teacher,
                      metric=metric, full_lr=config.full_lr)
    out: dict = {"config": config.to_dict(), "integrator": settings.to_dict(),
                 "teacher": teacher.to_dict(), "metric": metric, "by_shots": {}}
    total = len(config.shots) * config.episodes
    bar = ProgressBar(progress, total, "evaluate")
    for shots in config.shots:
        sampler = EpisodeSampler(ds.labels, ways=config.ways, shots=shots, queries=config.queries,
                                 seed=config.seed)
        accs: dict[str, list[float]] = {m: [] for m in config.methods}
        times: dict[str, list[float]] = {m: [] for m in config.methods}
        adapt_times: dict[str, list[float]] = {m: [] for m in config.methods}
        peaks: dict[str, list[int]] = {m: [] for m in config.methods}
        sweep: dict[int, list[float]] = {s: [] for s in config.step_sweep}
        largest = shots == max(config.shots)
        for i in range(config.episodes):
            task = make_task(ds, sampler.episode(i), pre)
            shared = adapter.cache(task, views=True)
            for m in config.methods:
                if m == "full-finetune" and (i >= config.full_episodes or not largest):
                    continue  # expensive: only the first episodes of the largest shot count
                if i < config.memory_episodes:
                    peaks[m].append(peak_memory_bytes(
                        lambda m=m, task=task, tc=shared: adapter.adapt_step(m, task, tc)))
                if i < config.timing_episodes or m == "full-finetune":
                    t0 = time.perf_counter()
                    adapter.adapt_step(m, task, shared)
                    adapt_times[m].append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    acc = adapter.run(m, task)  # end to end, the method computing its own features
                    times[m].append(time.perf_counter() - t0)
                else:
                    acc = adapter.run(m, task, shared)
                accs[m].append(acc)
            if sweep and largest:  # the sweep on the largest shot count only
                for s, a in adapter.sweep(shared, tuple(sweep)).items():
                    sweep[s].append(a)
            bar.advance(f"{shots}-shot episode {i + 1}")
        res = {m: _summary(accs[m], times[m], adapt_times[m], peaks[m])
               for m in config.methods if accs[m]}
        if "none" in res:
            for m, r in res.items():
                n = min(len(adapt_times[m]), len(adapt_times["none"]))
                if n:
                    r["adapt_extra_ms"] = statistics.median(
                        a - b for a, b in zip(adapt_times[m][:n], adapt_times["none"][:n],
                                              strict=True)) * 1e3
                if r["adapt_peak_mib"] is not None and res["none"]["adapt_peak_mib"] is not None:
                    r["adapt_extra_mib"] = r["adapt_peak_mib"] - res["none"]["adapt_peak_mib"]
                n = min(len(times[m]), len(times["none"]))
                if n:
                    r["extra_ms"] = statistics.median(
                        a - b for a, b in zip(times[m][:n], times["none"][:n], strict=True)) * 1e3
                n = len(accs[m])  # paired with none on the same episodes (full-finetune: fewer)
                r["gain"] = float(np.mean(np.subtract(accs[m], accs["none"][:n])))
        entry: dict = {"methods": res}
        if sweep and shots == max(config.shots):
            entry["euler_steps"] = {str(s): dict(zip(("accuracy", "ci95"), mean_ci(v), strict=True))
                                    for s, v in sweep.items()}
        if keep_episodes:
            entry["episode_accuracy"] = accs
        out["by_shots"][str(shots)] = entry
    bar.close()
    return out


