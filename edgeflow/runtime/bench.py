"""How long a bundle takes on its runtime (torch-free): backbone, drift step, adapt, predict.

Used by ``edgeflow bench`` and ``benchmarks/runtime.py`` (benchmark B3). Images are random uint8 arrays of the
bundle's input size: latency does not depend on pixel values. Numbers are wall-clock medians and
tails over ``repeats`` runs after ``warmup`` runs, in milliseconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgeflow.progress import ProgressBar
from edgeflow.runtime.drift_loop import first_inputs
from edgeflow.runtime.session import Session


def timings(fn: Callable[[], Any], *, repeats: int, warmup: int = 5) -> dict[str, float]:
    """median / p90 / p99 / mean of ``fn()`` wall time in ms."""
    for _ in range(warmup):
        fn()
    ts = np.empty(repeats)
    for i in range(repeats):
        t = time.perf_counter()
        fn()
        ts[i] = time.perf_counter() - t
    ts *= 1e3
    return {"median_ms": float(np.median(ts)), "p90_ms": float(np.percentile(ts, 90)),
            "p99_ms": float(np.percentile(ts, 99)), "mean_ms": float(ts.mean()), "runs": repeats}


def bench_session(bundle: str | Path, *, backend: str = "onnxruntime", precision: str | None = None,
                  threads: int | None = None, repeats: int = 100, warmup: int = 5,
                  ways: int = 5, shots: int = 5, queries: int = 75, batches: tuple[int, ...] = (1, 32),
                  progress: bool = False, seed: int = 0) -> dict[str, Any]:
    """Latency table of one bundle (see the module docstring)."""
    rng = np.random.default_rng(seed)
    with Session(bundle, backend=backend, precision=precision, threads=threads) as s:
        pre = s.preprocess
        shape = (pre.size, pre.size, pre.channels)
        support = rng.integers(0, 256, (ways * shots, *shape), dtype=np.uint8)
        labels = np.repeat(np.arange(ways), shots)
        query = rng.integers(0, 256, (queries, *shape), dtype=np.uint8)
        cases: dict[str, Callable[[], Any]] = {}
        for b in batches:
            x = s.prepare(rng.integers(0, 256, (b, *shape), dtype=np.uint8))
            runner = s.runners["backbone"]  # one call at batch b (Session.features would chunk)
            cases[f"backbone_b{b}"] = lambda x=x, r=runner: r.infer({"images": x, "theta": s.theta0})
        task = s.adapt(support, labels)
        if s.bundle.has_drift:
            z, stats = first_inputs(s, task)
            cases["drift_step"] = lambda: s.velocity(s.theta0, 0.5, z, stats)
        cases[f"adapt_{ways}w{shots}s"] = lambda: s.adapt(support, labels)
        cases[f"adapt_no_drift_{ways}w{shots}s"] = lambda: s.adapt(support, labels, steps=0)
        cases[f"predict_{queries}"] = lambda: s.predict(query, task)
        cases[f"adapt_predict_{ways}w{shots}s_{queries}q"] = lambda: s.predict(query, s.adapt(support,
                                                                                          labels))
        cases[f"no_adaptation_{ways}w{shots}s_{queries}q"] = lambda: s.predict(
            query, s.adapt(support, labels, steps=0))
        out: dict[str, Any] = {"backend": s.backend, "precision": s.precision,
                               "threads": threads, "drift": s.bundle.has_drift,
                               "steps": s.steps, "method": s.method, "cases": {}}
        with ProgressBar(progress, total=len(cases), label="bench") as bar:
            for name, fn in cases.items():
                out["cases"][name] = timings(fn, repeats=repeats, warmup=warmup)
                bar.advance(name)
    return out
