"""Teacher trajectories on base-split tasks: the training data of the drift network.

For every task (a seeded episode of the base split, or with probability ``instance_fraction`` an
instance task, see :func:`edgeflow.adapt.tasks.make_instance_task`; either with a per-task domain
shift drawn from :data:`edgeflow.adapt.tasks.SHIFTS` or none) and several starts (the clean theta0,
then theta0 plus Gaussian noise of ``noise`` times theta0's standard deviation), the teacher runs
``T`` Adam steps and records the task's own query accuracy along the way. The *stopping step* k* is
the fewest steps whose (smoothed) query accuracy is within ``tolerance`` of the best: the drift is
taught to go exactly as far as adaptation helps (k* = 0: stay put).

With ``recenter`` = alpha > 0 the teacher starts where the device does before the drift moves:
the start re-centred by alpha (:mod:`edgeflow.adapt.recenter`, from the support pass at theta0).
The stored path is the teacher's minus that move, so it still begins at the start. The device
integrates the drift from theta0 and adds the re-centring move (:class:`IntegratorSettings`), so
the drift learns what fine-tuning adds *after* re-centring, at the positions it will see. The
query-accuracy curves and stopping steps are the teacher's own (step 0: the re-centred start).

Storage: ``<dir>/manifest.json`` (the config) and ``<dir>/chunk_00000.npz`` ... (float32 starts
and float16 moves from them, (n, T+1, P), stopping steps, query-accuracy curves, float16 support
prototypes at theta0 that the drift conditions on). Generation is deterministic per task index,
written chunk by chunk atomically, and resumes by skipping the chunks already on disk.

Under ``torchrun`` the missing chunks are dealt round-robin to the ranks; each round is gathered on
rank 0, which alone writes files, so the folder is the same as a single process would write. The
work follows the backbone's device (move the model to a GPU to generate there).

Example::

    generate_trajectories(model, spec, base_ds, Preprocess(size=32), "runs/traj",
                          config=TrajectoryConfig(tasks=600), progress=True)
    data = load_trajectories("runs/traj")
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from edgeflow import distributed
from edgeflow.adapt.recenter import recenter_move, support_pass
from edgeflow.adapt.split import SplitFeatures, select
from edgeflow.adapt.tasks import Task, draw_task, sample_shift
from edgeflow.adapt.teacher import TeacherConfig, finetune, flip_cache, stopping_step
from edgeflow.adapt.theta import ThetaSpec, prototypes
from edgeflow.data import EpisodeSampler, ImageDataset, Preprocess
from edgeflow.errors import ConfigError, DataError
from edgeflow.models import Backbone
from edgeflow.progress import ProgressBar


@dataclass(frozen=True)
class TrajectoryConfig:
    """What to generate. ``shots`` are drawn per task; ``starts`` includes the clean one."""

    tasks: int = 600
    ways: int = 5
    shots: tuple[int, ...] = (1, 5)
    queries: int = 15
    starts: int = 2
    noise: float = 0.1
    plain_fraction: float = 0.35
    instance_fraction: float = 0.4
    # strong and long enough to reach the gains instance tasks offer (their query accuracy still
    # rises at 40 steps of 3e-2); each task's stopping step keeps class tasks from overshooting
    teacher: TeacherConfig = field(default_factory=lambda: TeacherConfig(lr=3e-2, steps=40))
    eval_every: int = 2
    # the re-centring alpha the teacher starts from (0: theta0 itself); see the module docstring
    recenter: float = 0.0
    tolerance: float = 0.005
    smooth: int = 3
    chunk: int = 25
    seed: int = 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shots"] = list(self.shots)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrajectoryConfig:
        d = dict(d)
        d["teacher"] = TeacherConfig(**d["teacher"])
        d["shots"] = tuple(d["shots"])
        d.setdefault("instance_fraction", 0.0)  # folders written before instance tasks existed
        d.setdefault("recenter", 0.0)  # and before re-centred starts
        return cls(**d)


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npz", dir=path.parent)
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def episode_samplers(ds: ImageDataset, config: TrajectoryConfig) -> dict[int, EpisodeSampler]:
    """The per-shot-count episode samplers that :func:`trajectory_task` draws from."""
    return {k: EpisodeSampler(ds.labels, ways=config.ways, shots=k, queries=config.queries,
                              seed=config.seed) for k in config.shots}


def trajectory_task(ds: ImageDataset, pre: Preprocess, samplers: dict[int, EpisodeSampler],
                    index: int, config: TrajectoryConfig,
                    ) -> tuple[Task, tuple[str, ...], np.random.Generator]:
    """(task, its domain shift, the task's generator advanced past them) for task ``index`` of a
    trajectory folder: deterministic, so analyses can rebuild the exact task a stored trajectory
    was generated on. The noisy starts draw from the returned generator."""
    rng = np.random.default_rng([config.seed, index])
    shots = int(rng.choice(config.shots))
    shift = sample_shift(rng, plain_fraction=config.plain_fraction)
    task = draw_task(ds, rng, pre, episode=samplers[shots].episode(index),
                     instance_fraction=config.instance_fraction, shift=shift,
                     seed=[config.seed, index, 1])
    return task, shift, rng


def task_trajectories(model: Backbone, spec: ThetaSpec, split: SplitFeatures, ds: ImageDataset,
                      pre: Preprocess, samplers: dict[int, EpisodeSampler], index: int,
                      config: TrajectoryConfig) -> dict[str, np.ndarray]:
    """All starts of task ``index``: arrays of one task (paths, curves, k*, prototypes)."""
    task, shift, rng = trajectory_task(ds, pre, samplers, index, config)
    shots = len(task.support_y) // task.ways
    theta0 = spec.get(model)
    dev = theta0.device  # the backbone's device: the teacher runs where the model is
    support_x, support_y = task.support_x.to(dev), task.support_y.to(dev)
    sup = flip_cache(split, support_x) if shots == 1 else split.prefix(support_x)
    qry = split.prefix(task.query_x.to(dev))
    # the device's one support pass at theta0: prototypes (the drift's condition) and the means
    feats, means = support_pass(split, select(sup, slice(0, len(support_y))), theta0,
                                means=config.recenter > 0)
    protos = prototypes(feats, support_y, task.ways).cpu()
    move = 0.0 if means is None else recenter_move(theta0, means.mean(0), alpha=config.recenter)
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    paths, accs, stops = [], [], []
    for s in range(config.starts):
        start = theta0 if s == 0 else theta0 + config.noise * theta0.std() * torch.randn(
            theta0.shape, generator=gen).to(dev)
        res = finetune(split, sup, support_y, task.ways, start + move, config=config.teacher,
                       query=qry, query_y=task.query_y.to(dev), eval_every=config.eval_every)
        paths.append((res.path - move).cpu().numpy())
        accs.append(res.query_acc.numpy())
        stops.append(stopping_step(res.query_acc, tolerance=config.tolerance, smooth=config.smooth))
    starts = np.stack([p[0] for p in paths])
    # float16 deltas from the start keep the small per-step moves precise; the start stays float32
    deltas = np.stack([p - p[0] for p in paths]).astype(np.float16)
    return {"start": starts.astype(np.float32), "delta": deltas,
            "query_acc": np.stack(accs).astype(np.float16),
            "stop": np.asarray(stops, np.int16), "protos": protos.numpy().astype(np.float16)[None],
            "shots": np.asarray([shots], np.int16), "shift": np.asarray(["+".join(shift)]),
            "kind": np.asarray([task.kind])}


def generate_trajectories(model: Backbone, spec: ThetaSpec, ds: ImageDataset, pre: Preprocess,
                          out_dir: str | Path, *, config: TrajectoryConfig, progress: bool = False,
                          extra_meta: dict | None = None, stats: dict | None = None) -> Path:
    """Write (or complete) a trajectory folder; returns it. Resumes where chunks already exist.

    ``stats``, when given, receives ``computed_tasks``: the tasks this process generated.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"config": config.to_dict(), "theta_layout": spec.layout(), **(extra_meta or {})}
    mpath = out / "manifest.json"
    n_chunks = -(-config.tasks // config.chunk)
    rank = distributed.info()
    todo, problem = None, None
    if rank.is_main:  # one reader/writer of the folder; the others get its verdict
        if mpath.exists():  # resuming: everything but the task count must match (per index)
            old = json.loads(mpath.read_text())
            same = {k: v for k, v in old.get("config", {}).items() if k != "tasks"} == \
                {k: v for k, v in manifest["config"].items() if k != "tasks"}
            if not same or old.get("theta_layout") != spec.layout():
                problem = (f"{out} holds trajectories of another configuration; use a new folder "
                           "(or delete it) to generate these")
        if problem is None:
            mpath.write_text(json.dumps(manifest, indent=1, sort_keys=True))
            todo = [c for c in range(n_chunks) if not (out / f"chunk_{c:05d}.npz").exists()]
    todo, problem = distributed.broadcast_object((todo, problem))
    if problem is not None:
        raise ConfigError(problem)
    model.eval()
    split = SplitFeatures(model, spec)
    samplers = episode_samplers(ds, config)

    def span(c: int) -> range:
        return range(c * config.chunk, min(config.tasks, (c + 1) * config.chunk))

    bar = ProgressBar(progress and rank.is_main, config.tasks, "trajectories")
    bar.advance("on disk", steps=config.tasks - sum(len(span(c)) for c in todo))
    computed = 0
    for r in range(0, len(todo), rank.world_size):
        mine = todo[r + rank.rank] if r + rank.rank < len(todo) else None
        arrays = None
        if mine is not None:
            computed += len(span(mine))
            parts = []
            for i in span(mine):
                parts.append(task_trajectories(model, spec, split, ds, pre, samplers, i, config))
                if rank.world_size == 1:
                    bar.advance(f"chunk {mine + 1}/{n_chunks}")
            arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            arrays["task"] = np.repeat(np.asarray(span(mine)), config.starts).astype(np.int32)
        gathered = distributed.gather_to_main((mine, arrays))
        for c, arr in gathered or []:
            if c is not None:
                _save_npz(out / f"chunk_{c:05d}.npz", **arr)
                if rank.world_size > 1:
                    bar.advance(f"chunk {c + 1}/{n_chunks}", steps=len(span(c)))
    distributed.barrier()
    if stats is not None:
        stats["computed_tasks"] = computed
    bar.close()
    return out


@dataclass
class Trajectories:
    """All chunks of a folder. Rows are (task, start) pairs; ``task_row`` indexes ``protos``."""

    paths: torch.Tensor  # (N, T+1, P) float32
    stop: torch.Tensor  # (N,) int64, stopping step k*
    query_acc: torch.Tensor  # (N, T+1)
    task_row: torch.Tensor  # (N,) row in protos
    protos: torch.Tensor  # (n_tasks, W, D)
    shots: torch.Tensor  # (n_tasks,)
    shift: list[str]  # (n_tasks,)
    kind: list[str]  # (n_tasks,) "class" or "instance" (edgeflow.adapt.tasks)
    config: TrajectoryConfig
    task_index: torch.Tensor  # (n_tasks,) the task numbers (trajectory_task rebuilds a task)

    def __len__(self) -> int:
        return len(self.stop)


def load_trajectories(folder: str | Path) -> Trajectories:
    """Read every chunk of ``folder`` (written by :func:`generate_trajectories`)."""
    folder = Path(folder)
    mpath = folder / "manifest.json"
    chunks = sorted(folder.glob("chunk_*.npz"))
    if not mpath.exists() or not chunks:
        raise DataError(f"{folder} holds no trajectories; generate them first (edgeflow meta-train "
                        "does)")
    config = TrajectoryConfig.from_dict(json.loads(mpath.read_text())["config"])
    chunks = chunks[:-(-config.tasks // config.chunk)]  # a larger earlier run may have left more
    parts = []
    for c in chunks:
        with np.load(c, allow_pickle=False) as z:
            parts.append({k: z[k] for k in z.files})
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    tasks = np.concatenate([np.unique(p["task"]) for p in parts])
    row_of = {int(t): i for i, t in enumerate(tasks)}
    shift, kind = [str(s) for s in cat["shift"]], None
    if "kind" in cat:
        kind = [str(k) for k in cat["kind"]]
    else:  # older folders: no kinds (class tasks only), or instance tasks marked in the shift
        parts_of = [s.split("+") if s else [] for s in shift]
        kind = ["instance" if p[:1] == ["instance"] else "class" for p in parts_of]
        shift = ["+".join(p[1:] if p[:1] == ["instance"] else p) for p in parts_of]
    return Trajectories(
        paths=torch.from_numpy(cat["start"][:, None, :] + cat["delta"].astype(np.float32)),
        stop=torch.from_numpy(cat["stop"].astype(np.int64)),
        query_acc=torch.from_numpy(cat["query_acc"].astype(np.float32)),
        task_row=torch.tensor([row_of[int(t)] for t in cat["task"]]),
        protos=torch.from_numpy(cat["protos"].astype(np.float32)),
        shots=torch.from_numpy(cat["shots"].astype(np.int64)),
        shift=shift, kind=kind,
        config=config, task_index=torch.from_numpy(tasks.astype(np.int64)))
