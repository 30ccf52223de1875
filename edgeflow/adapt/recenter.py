"""Re-centring: a forward-only move of theta from the support set's channel means.

A BatchNorm layer's output has mean beta (its shift, a theta entry) on training data: the running
mean removes the input's mean. On a new domain the support set's mean output per channel,
``m = gamma * (mu_support - mu_running) / sigma + beta``, drifts away from beta. Re-centring moves
each BatchNorm shift in theta back by a fraction ``alpha`` of that drift::

    theta' = theta0 - alpha * (m - theta0)          (alpha = 1: the support mean is beta again)

This is AdaBN's mean correction restricted to theta, so the graph and its engine stay fixed. It
needs the theta layers' outputs of the *same* support pass at theta0 that gives the drift its
prototypes, so on the device it costs no extra backbone pass and no gradient. All layers are
corrected from that one pass (not layer by layer): on 300 fresh Tiny-ImageNet val tasks the
one-pass form scored as well as the sequential one (5-shot 62.88 vs 62.76 at alpha 0.75).

Theta entries that are not BatchNorm shifts (conv biases of BN-free layers) have no training mean
to return to; their "mean" is reported as theta itself, so their move is exactly 0.

Example::

    feats, means = support_pass(split, split.prefix(support_x), theta0)   # one pass
    theta = recentered(theta0, means, alpha=0.75)
"""

from __future__ import annotations

import torch
from torch import nn

from edgeflow.adapt.split import Cache, SplitFeatures


def recenter_layers(model: nn.Module, names: tuple[str, ...]) -> list[nn.Module | None]:
    """The BatchNorm module owning each theta parameter name (None where it is not a BN shift)."""
    out: list[nn.Module | None] = []
    for name in names:
        owner, _, leaf = name.rpartition(".")
        module = model.get_submodule(owner) if owner else model
        is_bn = isinstance(module, nn.modules.batchnorm._BatchNorm) and leaf == "bias"
        out.append(module if is_bn else None)
    return out


@torch.no_grad()
def support_pass(split: SplitFeatures, cache: Cache, theta: torch.Tensor, *,
                 means: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One suffix pass at ``theta``: (features (N, D), per-image spatial means (N, P) of the theta
    layers' outputs in theta order, or None without ``means``). Non-BatchNorm entries of the means
    hold ``theta`` itself (no re-centring for them)."""
    if not means:
        return split.suffix(cache, theta), None
    layers = recenter_layers(split.model, split.spec.names)
    got: dict[int, torch.Tensor] = {}
    # the mean is taken inside the hook: an in-place ReLU after the layer overwrites its output
    hooks = [m.register_forward_hook(
        lambda _m, _i, o, k=k: got.__setitem__(k, o.reshape(*o.shape[:2], -1).mean(-1)))
        for k, m in enumerate(layers) if m is not None]
    try:
        feats = split.suffix(cache, theta)
    finally:
        for h in hooks:
            h.remove()
    n = len(cache[0])
    parts = [got[k] if k in got else piece.expand(n, -1)
             for k, piece in enumerate(split.spec.split(theta).values())]
    return feats, torch.cat(parts, dim=1)


def theta_means(split: SplitFeatures, cache: Cache, theta: torch.Tensor) -> torch.Tensor:
    """Per-image spatial means (N, P) of the theta layers' outputs at ``theta`` (see
    :func:`support_pass`)."""
    return support_pass(split, cache, theta)[1]


def recenter_move(theta0: torch.Tensor, mean: torch.Tensor, *, alpha: float) -> torch.Tensor:
    """The re-centring move: ``-alpha * (mean - theta0)`` for support means ``mean`` averaged over
    the support images, (P,) or a batch of tasks (B, P). Add it to any theta (the drift's end)."""
    return -alpha * (mean - theta0)


def recentered(theta0: torch.Tensor, means: torch.Tensor, *, alpha: float) -> torch.Tensor:
    """theta0 moved ``alpha`` of the way back from the support mean ``means`` (N, P) to theta0."""
    if alpha == 0:
        return theta0
    return theta0 + recenter_move(theta0, means.mean(0), alpha=alpha)


def best_alone(table: dict) -> float:
    """The re-centring strength that scored best *alone* (0 drift steps) in a selection table
    ``{alpha: {steps: val accuracy}}`` (``meta_train``'s ``val_acc_by_recenter``; alpha 0 at 0 steps
    is no adaptation), the smaller on ties; 0 when nothing beat no adaptation."""
    scores = {float(a): row.get("0") for a, row in table.items() if row.get("0") is not None}
    return max(scores, key=lambda a: (scores[a], -a)) if scores else 0.0
