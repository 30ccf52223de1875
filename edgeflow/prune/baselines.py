"""Baselines in the same harness: global magnitude (one-shot, and gradual GMP) and random masks.

They reuse the score masks of :mod:`edgeflow.prune.scored` with frozen scores (the mask is set by
moving scores across zero), so training, counting, finalising and exporting are identical to
Hyperflows'. All are global over every masked conv/linear weight, first and last layers included.
"""

from __future__ import annotations

import torch

from edgeflow.prune.scored import MaskSet, latent_weight


def _keep_count(ms: MaskSet, density: float) -> int:
    counts = ms.layer_counts()
    total = sum(t for _, t in counts.values())
    fixed = sum(t for name, (_, t) in counts.items() if name not in ms.masks)
    return max(0, round(density * total - fixed))


def _split(ms: MaskSet, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    out, i = {}, 0
    for name, mk in ms.masks.items():
        numel = mk.scores.numel()
        out[name] = flat[i:i + numel].view_as(mk.scores)
        i += numel
    return out


def magnitude_keep(ms: MaskSet, density: float) -> dict[str, torch.Tensor]:
    """Keep the globally largest |w_eff| (already-pruned weights count as 0, so stay pruned)."""
    mags = []
    for name, mk in ms.masks.items():
        w = latent_weight(ms.layers[name]).detach()
        mags.append((w.abs() * mk.keep()).reshape(-1))
    flat = torch.cat(mags)
    keep = torch.zeros_like(flat, dtype=torch.bool)
    k = min(_keep_count(ms, density), flat.numel())
    if k > 0:
        keep[flat.topk(k).indices] = True
    return _split(ms, keep)


def random_keep(ms: MaskSet, density: float, *, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Keep a uniformly random global subset of the right size."""
    n = ms.num_scores()
    keep = torch.zeros(n, dtype=torch.bool)
    k = min(_keep_count(ms, density), n)
    keep[torch.randperm(n, generator=generator)[:k]] = True
    return _split(ms, keep.to(ms.scores()[0].device))


def cubic_density(step: int, total: int, final_density: float) -> float:
    """Zhu & Gupta's gradual schedule: sparsity s_f * (1 - (1 - t/T)^3), as a density."""
    frac = min(1.0, step / max(1, total))
    return 1.0 - (1.0 - final_density) * (1.0 - (1.0 - frac) ** 3)
