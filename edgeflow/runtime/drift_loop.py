"""The drift's adaptation path on the device, open or closed loop (numpy; the reference is
:func:`edgeflow.adapt.loop.drift_path`, and a test holds the two together).

From the support pass at theta0: prototypes (and the shots, for a task encoder that reads them)
-> z (task encoder), and for a drift whose graph reads them, the support statistics
(:mod:`edgeflow.runtime.signals`); then Euler steps of ``drift.onnx``.
Closed loop (the manifest's ``integrator.loop_every`` = r > 0): every r steps one suffix pass over
the support set's cache at the current theta refreshes z and the statistics.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeflow.integrate import integrate
from edgeflow.runtime.protos import prototypes
from edgeflow.runtime.signals import support_stats


def graph_inputs(session: Any, graph: str) -> set[str]:
    """Input names of one of the bundle's graphs: ``stats`` in ``drift`` for a drift reading
    statistics, ``shots`` in ``task_encoder`` for an encoder reading the individual shots."""
    return {i.name for i in session.runners[graph].inputs}


def support_pass(session: Any, cache: dict[str, np.ndarray], theta: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """(features, theta-layer means or None) of a support cache at ``theta``: the means only for
    a drift that reads statistics."""
    if session.drift_stats:
        feats, means = session._suffix(cache, theta.astype(np.float32), "features", "theta_means")
        return feats, means
    return session._suffix(cache, theta.astype(np.float32), "features")[0], None


def drift_inputs_of(session: Any, feats: np.ndarray, means: np.ndarray | None, ep: np.ndarray,
                    w: int, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(z (1, E), support statistics (1, S) or None) from one support pass (``feats``, ``means``)
    at ``theta``: what the drift reads (no statistics for a drift that does not read them)."""
    z = session.embed_task(prototypes(feats, ep, w), shots=feats, labels=ep)
    return z, (support_stats(feats, means, ep, w, theta)[None] if session.drift_stats else None)


def drift_path(session: Any, cache: dict[str, np.ndarray], ep: np.ndarray, w: int,
               feats0: np.ndarray, means0: np.ndarray | None, steps: int) -> list[np.ndarray]:
    """[theta0, theta_1, ..., theta_steps] of the bundle's drift on one support set (without the
    re-centring move, which the caller adds); ``feats0``/``means0`` are the support pass at
    theta0 (``means0`` is needed by a drift reading statistics)."""
    every = session.loop_every or max(1, steps)
    dt = session.dt if session.dt is not None else 1.0 / max(1, steps)
    theta, feats, means = session.theta0, feats0, means0
    path, k = [theta], 0
    while k < steps:
        if k:  # closed loop: see the support set again at the current theta
            feats, means = support_pass(session, cache, theta)
        z, stats = drift_inputs_of(session, feats, means, ep, w, theta)
        n = min(every, steps - k)
        seg = integrate(lambda t, th, z=z, s=stats: session.velocity(th, t, z, s), theta,
                        steps=n, dt=dt, t0=k * dt, method=session.method, return_path=True)
        path += [np.asarray(p, np.float32) for p in seg[1:]]
        theta, k = path[-1], k + n
    return path


def first_inputs(session: Any, task: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """(z (1, E), support statistics (1, S) or None) of ``task``'s support set at theta0: what
    the bundle's drift reads on its first step (no statistics for a drift that does not read
    them); for timing one drift evaluation without adapting."""
    support = session._task_support(task)
    _, ep = np.unique(support.labels, return_inverse=True)
    feats, means = support_pass(session, support.cache, session.theta0)
    return drift_inputs_of(session, feats, means, ep, int(ep.max()) + 1, session.theta0)
