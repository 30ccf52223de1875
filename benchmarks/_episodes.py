"""What the adaptation benchmarks share: seeded episodes as cached tasks, and the teacher grid the
per-domain oracle picks from (``adapt.py``, ``outcome.py``, ``ablation.py``)."""

from __future__ import annotations

from collections.abc import Iterator

ORACLE_LRS = (1e-3, 3e-3, 1e-2, 3e-2)
ORACLE_STEPS = (5, 10, 20, 40)


def episode_tasks(split, ds, pre, *, shots: int, episodes: int, seed: int,
                  ways: int = 5, queries: int = 15) -> Iterator:
    """The first ``episodes`` seeded episodes of ``ds`` (EpisodeSampler ``seed``) as
    :class:`~edgeflow.adapt.split.TaskCache` objects, one at a time: the same episodes for every
    method and script given the same seed."""
    from edgeflow.adapt.split import TaskCache
    from edgeflow.adapt.tasks import make_task
    from edgeflow.data import EpisodeSampler

    sampler = EpisodeSampler(ds.labels, ways=ways, shots=shots, queries=queries, seed=seed)
    for i in range(episodes):
        t = make_task(ds, sampler.episode(i), pre)
        yield TaskCache(split, t.support_x, t.support_y, t.query_x, t.query_y, ways)


def teacher_grid(split, tc, theta0, *, base) -> tuple[dict[str, float], float]:
    """({"lr@steps": query accuracy}, the accuracy at theta0) of the teacher ``base`` (a
    TeacherConfig) at every lr of ORACLE_LRS and step count of ORACLE_STEPS on one cached task;
    one run of max(ORACLE_STEPS) steps per lr gives every step count."""
    from dataclasses import replace

    from edgeflow.adapt.teacher import finetune

    out, start = {}, 0.0
    for lr in ORACLE_LRS:
        acc = finetune(split, tc.support, tc.support_y, tc.ways, theta0,
                       config=replace(base, lr=lr, steps=max(ORACLE_STEPS)), query=tc.query,
                       query_y=tc.query_y).query_acc
        out.update({f"{lr:g}@{s}": float(acc[s]) for s in ORACLE_STEPS})
        start = float(acc[0])
    return out, start
