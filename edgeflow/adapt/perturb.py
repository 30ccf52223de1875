"""DSU-style domain perturbation of cached prefix activations (outcome meta-training's tasks).

Each channel's mean and standard deviation are moved by Gaussian noise scaled by their spread over
the task's images, the same noise for support and queries, so a task looks like it came from
another domain. The noise is drawn by :func:`perturb_noise` alone so that a rank can advance the
generator past a task another rank computes (:func:`edgeflow.adapt.outcome.meta_train_outcome`).

Example::

    cache = perturb_statistics(split.prefix(x), torch.Generator().manual_seed(0), strength=1.0)
"""

from __future__ import annotations

import torch

from edgeflow.adapt.split import Cache


def perturb_noise(cache: Cache, gen: torch.Generator, *, strength: float) -> list:
    """The N(0, 1) draws :func:`perturb_statistics` makes for a cache of this layout (per tensor:
    a (mean, std) pair of (1, C, 1, 1) noises, or None where it passes the tensor through). Ranks
    call it alone for the tasks other ranks compute, to keep ``gen`` where a single process has it."""
    return [None if c.dim() != 4 or strength <= 0 else
            tuple(torch.randn(1, c.shape[1], 1, 1, generator=gen) for _ in range(2))
            for c in cache]


def perturb_statistics(cache: Cache, gen: torch.Generator, *, strength: float) -> Cache:
    """DSU-style domain perturbation of 4-D cached activations (N, C, H, W): every channel's
    per-image mean and std moved by ``strength`` x N(0, 1) x their spread over the images, the
    noise shared by all images of the task (support and queries). Other tensors pass through."""
    out = []
    for c, noise in zip(cache, perturb_noise(cache, gen, strength=strength), strict=True):
        if noise is None:
            out.append(c)
            continue
        mu = c.mean((2, 3), keepdim=True)
        sig = (c.var((2, 3), keepdim=True, correction=0) + 1e-6).sqrt()  # 1x1 maps: 0, not NaN
        s_mu = mu.std(0, keepdim=True) if len(c) > 1 else mu.abs().mean(0, keepdim=True)
        s_sig = sig.std(0, keepdim=True) if len(c) > 1 else sig.mean(0, keepdim=True)
        e1, e2 = (e.to(c) for e in noise)
        new_mu = mu + strength * e1 * s_mu
        new_sig = (sig + strength * e2 * s_sig).clamp_min(1e-3)
        out.append((c - mu) / sig * new_sig + new_mu)
    return tuple(out)
